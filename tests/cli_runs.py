"""Runs of the installed `lightning` script, as a user starts them, and the seconds-sized configs
the CLI tests merge over the demo configs (a second `--config`)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GEOSIGN_TOKEN = str(REPO / "experiments" / "demo" / "geosign_token.yaml")
# Appends a line per optimizer step to $SIGNLAB_TEST_STEP_LOG (read back with `step_losses`).
STEP_LOG = "tests.cli_fixtures.kill_at_step.StepLog"

# A seconds-sized Geo-Sign model (the `model:` section).
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
# Over geosign_token.yaml: 24 training samples / batch 4 = 6 steps per epoch, 2 epochs; `last.ckpt`
# every 2 steps.
TINY_GEOSIGN = """
trainer:
  max_epochs: 2
  log_every_n_steps: 1
  enable_progress_bar: false
  deterministic: true
step_checkpoint:
  every_n_train_steps: 2
""" + TINY_GEOSIGN_MODEL + """data:
  init_args:
    max_len: 32
    batch_size: 4
    num_workers: 0
    synthsign_kwargs: {num_train: 24, num_dev: 6, num_test: 2}
"""
# Over pose_vqvae.yaml, then TINY_DIFFUSION over posevq_diffusion.yaml, which reads the former's
# run folder `runs/vq`: 6 steps per epoch each.
TINY_VQVAE = """
trainer: {max_epochs: 1, enable_progress_bar: false, limit_val_batches: 1}
model:
  init_args: {hidden: 16, layers: 1, heads: 2, codebook_size: 32, spl_hidden: 8, num_image_samples: 1}
data:
  init_args:
    batch_size: 4
    num_workers: 0
    synthsign_kwargs: {num_train: 24, num_dev: 4, num_test: 2}
"""
TINY_DIFFUSION = """
trainer: {max_epochs: 2, log_every_n_steps: 1, enable_progress_bar: false, deterministic: true, limit_val_batches: 1}
step_checkpoint: {every_n_train_steps: 2}
model:
  init_args:
    vqvae_ckpt: runs/vq/checkpoints/last.ckpt
    network: {d_model: 16, heads: 2, encoder_depth: 1, blocks_per_level: 1, middle_blocks: 1}
    diffusion: {sample_steps: 2}
    length: {knn_k: 4, knn_l: 4}
    optim: {warmup_steps: 2}
    num_logged_samples: 1
data:
  init_args:
    batch_size: 4
    num_workers: 0
    synthsign_kwargs: {num_train: 24, num_dev: 4, num_test: 2}
"""


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed `lightning` console script in `cwd`, as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_SILENT": "true", **(env or {})}
    full_env.pop("WANDB_MODE", None) if env is None or "WANDB_MODE" not in env else None
    # wandb exports its service's address to the process that started it (an in-process test's
    # logger): a CLI inheriting it would share that service, which keeps a run's id in use and its
    # offline file unwritten after the CLI exits; a user's shell starts its own
    full_env.pop("WANDB_SERVICE", None)
    exe = Path(sys.executable).with_name("lightning")
    return subprocess.run([str(exe), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc


def step_losses(path: Path) -> dict[int, float]:
    """{optimizer step: loss} from a STEP_LOG file."""
    rows = (line.split() for line in path.read_text().splitlines())
    return {int(step): float.fromhex(loss) for step, loss, *_ in rows}
