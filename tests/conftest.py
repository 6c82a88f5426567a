from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests never download: every Hugging Face load reads a cache (the tests build their own). Set
# before huggingface_hub is imported (it reads these once); CLI subprocesses inherit them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# A seconds-sized Geo-Sign model, merged over a demo config by the CLI tests (the `model:` section).
TINY_GEOSIGN_MODEL = """\
model:
  init_args:
    mt5_config: {d_model: 32, d_ff: 64, num_layers: 1, num_decoder_layers: 1, num_heads: 2,
                 d_kv: 16, dropout_rate: 0.1, vocab_size: 256}
    encoder: {hidden: [8, 8, 16, 16], temporal_blocks: 1}
    hyp_dim: 16
    num_beams: 1
    max_new_tokens: 5
"""


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed `lightning` console script in `cwd`, as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_SILENT": "true", **(env or {})}
    full_env.pop("WANDB_MODE", None) if env is None or "WANDB_MODE" not in env else None
    exe = Path(sys.executable).with_name("lightning")
    return subprocess.run([str(exe), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core runner two threads per process
    make small ops tens of times slower; training subprocesses keep torch's default."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
