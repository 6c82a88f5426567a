from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.cli_runs import REPO

# Tests never download: every Hugging Face load reads a cache (the tests build their own). Set
# before huggingface_hub is imported (it reads these once); CLI subprocesses inherit them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = REPO.parent / "shared" / "data"


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


# Hugging Face caches (tests/hf_cache.py). Imported when used: huggingface_hub and transformers
# take seconds to import, which the tests that never touch a hub should not pay.


@pytest.fixture
def offline_cache(monkeypatch, tmp_path) -> Iterator[Path]:
    """HF_HUB_OFFLINE=1 with an empty private cache; returns the hub cache folder."""
    from huggingface_hub.utils import reset_sessions

    from tests.hf_cache import use_cache

    yield use_cache(monkeypatch, tmp_path / "hf", offline=True)
    reset_sessions()  # no offline session outlives the test


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Online mode with an empty private cache and every huggingface_hub request answered by a
    `FakeHub` (nothing leaves the machine): yields (cache folder, hub); add repos to `hub.repos`."""
    import huggingface_hub
    import requests

    from tests.hf_cache import FakeHub, use_cache

    cache = use_cache(monkeypatch, tmp_path / "hf", offline=False)
    hub = FakeHub({})

    def session() -> requests.Session:
        s = requests.Session()
        s.mount("http://", hub)
        s.mount("https://", hub)
        return s

    huggingface_hub.configure_http_backend(backend_factory=session)
    yield cache, hub
    huggingface_hub.configure_http_backend()  # huggingface_hub's own sessions again
