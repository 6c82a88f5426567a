"""Checkpoints are data: every load site refuses code, names the file, and detects damage."""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.fabric.utilities.data import AttributeDict

from lightning_modules.checkpoint_io import (UNSAFE_LOAD_ENV, AtomicCheckpointIO, CheckpointError,
                                             CorruptCheckpointError, UnsafeCheckpointError, atomic_torch_save,
                                             check_checkpoint, load_checkpoint_file, load_lightning_module)
from tests.hostile_files import Payload, evil_checkpoint


@pytest.fixture(autouse=True)
def _no_opt_in(monkeypatch):
    monkeypatch.delenv(UNSAFE_LOAD_ENV, raising=False)


# ------------------------------------------------------------------------------- code never runs


def test_every_library_load_site_refuses_code_and_names_the_file(tmp_path):
    from benchmarks.sampling import CHECKPOINT_FLAGS, load_checkpoints
    from lightning_modules.production_caches import TargetsCache
    from lightning_modules.posevq_diffusion import load_frozen_vqvae
    from tests.cli_fixtures.tiny import TinyRegressor

    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    loads = {
        "load_checkpoint_file": lambda: load_checkpoint_file(path),
        "weights_only=False": lambda: load_checkpoint_file(path, weights_only=False),
        "mmap peek": lambda: load_checkpoint_file(path, mmap=True),
        "check_checkpoint": lambda: check_checkpoint(path),
        "load_from_checkpoint": lambda: load_lightning_module(TinyRegressor, path),
        "Lightning CheckpointIO": lambda: AtomicCheckpointIO().load_checkpoint(path),
        "vqvae_ckpt": lambda: load_frozen_vqvae(str(path)),
        "targets cache": lambda: TargetsCache(2, 2).load(path, torch.nn.Linear(1, 1)),
        "benchmarks/sampling.py": lambda: load_checkpoints(argparse.Namespace(
            **{flag: path if method == "diffusion" else None for method, flag in CHECKPOINT_FLAGS.items()})),
    }
    for site, load in loads.items():
        with pytest.raises(UnsafeCheckpointError, match="evil.ckpt.*posix.system") as info:
            load()
        assert SAFE_HINT in str(info.value), site
    assert not marker.exists()


SAFE_HINT = f"set {UNSAFE_LOAD_ENV}=1"


def test_back_translator_and_targets_cache_refuse_code(tmp_path):
    from lightning_modules.posevq_diffusion import PoseVQDiffusion
    from lightning_modules.production_caches import TargetsCache

    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "bt.ckpt", marker)
    # setup("test") only reads `hparams`, and the cache file is read before the tokenizer is looked at: no model needed.
    fake = argparse.Namespace(hparams=AttributeDict(back_translator_ckpt=str(evil)), evaluator=None)
    with pytest.raises(UnsafeCheckpointError, match="bt.ckpt"):
        PoseVQDiffusion.setup(fake, "test")
    cache = evil_checkpoint(tmp_path / "posevq_targets.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match="posevq_targets.pt"):
        TargetsCache(16, 16).load(cache, torch.nn.Linear(1, 1))
    assert not marker.exists()


def test_unsafe_load_is_an_explicit_opt_in_with_a_warning(tmp_path, monkeypatch, caplog):
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "old.ckpt", marker)
    monkeypatch.setenv(UNSAFE_LOAD_ENV, "1")
    with pytest.raises(UnsafeCheckpointError, match="old.ckpt"):  # weights_only=True is never overridden
        load_checkpoint_file(path, weights_only=True)
    assert not marker.exists()
    with caplog.at_level("WARNING"):
        load_checkpoint_file(path)
    assert marker.exists() and "old.ckpt" in caplog.text and UNSAFE_LOAD_ENV in caplog.text


# ------------------------------------------------------------------- our own checkpoints are data


def test_hyperparameters_are_saved_as_plain_containers(tmp_path):
    namespace = argparse.Namespace(dim=8, paths=[Path("a/b")])
    hparams = AttributeDict(lr=np.float32(0.5), run=Path("runs/x"), nested=namespace, pair=(1, "two"))
    state = torch.nn.BatchNorm1d(2).state_dict()
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": state, "hyper_parameters": hparams}, path)
    loaded = torch.load(path, weights_only=True)  # plain torch, no signlab allow-list
    assert loaded["hyper_parameters"] == {"lr": 0.5, "run": "runs/x", "nested": {"dim": 8, "paths": ["a/b"]},
                                          "pair": (1, "two")}
    assert loaded["state_dict"]._metadata == state._metadata  # BatchNorm's version survives


def test_saving_something_that_needs_code_fails_naming_the_key(tmp_path):
    with pytest.raises(TypeError, match=r"\['hyper_parameters'\]\['bad'\].*Payload"):
        atomic_torch_save({"hyper_parameters": {"bad": Payload(tmp_path / "x")}}, tmp_path / "c.ckpt")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- integrity: checksum


def _checkpoint_bytes(tmp_path) -> tuple[Path, bytes]:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.arange(64.0)}, "global_step": 3, "hyper_parameters": {"a": 1}}, path)
    return path, path.read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_byte_is_a_named_error(tmp_path, data):
    path, raw = _checkpoint_bytes(tmp_path)
    position = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    damaged = bytearray(raw)
    damaged[position] ^= 1 << bit
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptCheckpointError, match="last.ckpt"):
        load_checkpoint_file(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_truncation_is_a_named_error(tmp_path, data):
    path, raw = _checkpoint_bytes(tmp_path)
    path.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1))])
    with pytest.raises(CorruptCheckpointError, match="last.ckpt"):
        load_checkpoint_file(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused_naming_the_file(tmp_path, junk):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(junk)
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        load_checkpoint_file(path)


def test_foreign_checkpoints_without_a_checksum_still_load(tmp_path):
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.ones(2)}}, buffer)  # e.g. a released Uni-Sign checkpoint
    (tmp_path / "released.pth").write_bytes(buffer.getvalue())
    assert torch.equal(load_checkpoint_file(tmp_path / "released.pth", weights_only=True)["model"]["w"], torch.ones(2))
