"""The `lightning` script with hostile or damaged run folders: no code runs, one writer per folder."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lightning_modules.checkpoint_io import UNSAFE_LOAD_ENV, atomic_torch_save, load_checkpoint_file
from lightning_modules.cli import LOCK_FILE, RunFolderBusyError, run_folder_lock
from tests.cli_runs import REPO, run_cli
from tests.hostile_files import evil_checkpoint

TINY = str(REPO / "tests" / "cli_fixtures" / "tiny.yaml")
NO_WANDB = ["--trainer.logger", "false"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real run folder of the tiny experiment (1 epoch): last.ckpt and a best checkpoint."""
    root = tmp_path_factory.mktemp("trained")
    proc = run_cli(["fit", "--config", TINY, "--trainer.max_epochs", "1"], cwd=root, env={"WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _copy(run_root, tmp_path):
    """The trained run copied to `tmp_path`, its last.ckpt pointing at the copy's best checkpoint
    (Lightning records absolute paths)."""
    shutil.copytree(run_root / "runs", tmp_path / "runs")
    checkpoints = tmp_path / "runs" / "tiny" / "checkpoints"
    last = load_checkpoint_file(checkpoints / "last.ckpt")
    for state in last["callbacks"].values():
        if state.get("best_model_path"):
            state["best_model_path"] = str(checkpoints / Path(state["best_model_path"]).name)
    atomic_torch_save(last, checkpoints / "last.ckpt")
    return checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fit file, W&B lookup", "fit last", "test best"])
def test_a_checkpoint_with_code_is_refused_at_every_cli_site(trained_run, tmp_path, case):
    checkpoints = _copy(trained_run, tmp_path)
    marker = tmp_path / "pwned"
    best = next(checkpoints.glob("epoch=*.ckpt"))
    args = {
        "fit file, W&B lookup": ["fit", "--ckpt_path", str(evil_checkpoint(tmp_path / "evil.ckpt", marker))],
        "fit last": ["fit", "--ckpt_path", "last"],
        "test best": ["test", *NO_WANDB, "--ckpt_path", "best"],
    }[case]
    target = {"fit last": checkpoints / "last.ckpt", "test best": best}.get(case, tmp_path / "evil.ckpt")
    evil_checkpoint(target, marker)
    env = {"WANDB_MODE": "offline"}
    proc = run_cli([args[0], "--config", TINY, *args[1:]], cwd=tmp_path, env=env)
    assert proc.returncode != 0
    assert not marker.exists(), "the checkpoint's payload ran"
    assert "UnsafeCheckpointError" in proc.stderr and target.name in proc.stderr and UNSAFE_LOAD_ENV in proc.stderr


@pytest.mark.slow
def test_a_flipped_byte_in_last_ckpt_stops_the_resume_naming_it(trained_run, tmp_path):
    checkpoints = _copy(trained_run, tmp_path)
    last = checkpoints / "last.ckpt"
    raw = bytearray(last.read_bytes())
    raw[len(raw) // 3] ^= 0x10
    last.write_bytes(bytes(raw))
    proc = run_cli(["fit", "--config", TINY, *NO_WANDB, "--ckpt_path", "last"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "CorruptCheckpointError" in proc.stderr and "last.ckpt fails its checksum" in proc.stderr


def test_run_folder_lock_names_the_holder(tmp_path):
    with run_folder_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(RunFolderBusyError, match=f"PID {os.getpid()}"):
            with run_folder_lock(tmp_path):
                pass
    with run_folder_lock(tmp_path):  # released when the holder is done
        pass


@pytest.mark.slow
def test_a_second_fit_in_a_busy_run_folder_stops_naming_the_pid(tmp_path):
    run_dir = tmp_path / "runs" / "tiny"
    with run_folder_lock(run_dir):  # this test process plays the running fit
        proc = run_cli(["fit", "--config", TINY, *NO_WANDB], cwd=tmp_path)
    assert proc.returncode != 0
    assert f"is in use by another fit (PID {os.getpid()})" in proc.stderr
    assert not (run_dir / "checkpoints").exists()  # it stopped before writing anything


def test_last_good_is_the_newest_checkpoint_that_verifies_and_only_when_asked(tmp_path):
    from lightning_modules.cli import resolve_last_checkpoint, resolve_last_good_checkpoint

    folder = tmp_path / "checkpoints"
    good = folder / "epoch=0-step=8.ckpt"
    atomic_torch_save({"global_step": 8}, good)
    evil = evil_checkpoint(folder / "epoch=1-step=16.ckpt", tmp_path / "pwned")
    last = folder / "last.ckpt"
    atomic_torch_save({"global_step": 20}, last)
    raw = bytearray(last.read_bytes())
    raw[100] ^= 1
    last.write_bytes(bytes(raw))
    for age, path in enumerate((last, evil, good)):  # last is the newest
        os.utime(path, (1e9 - age, 1e9 - age))
    assert resolve_last_checkpoint(tmp_path) == str(last)  # `last` never falls back by itself
    assert resolve_last_good_checkpoint(tmp_path) == str(good)
    good.unlink()
    with pytest.raises(FileNotFoundError, match="last_good: no checkpoint in .*checkpoints passes"):
        resolve_last_good_checkpoint(tmp_path)
    assert not (tmp_path / "pwned").exists()
