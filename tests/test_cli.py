"""The `lightning` console script end to end, through a subprocess as users run it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.cli_runs import REPO, run_cli
from tests.wandb_offline import offline_runs, read_offline_run

TINY = str(REPO / "tests" / "cli_fixtures" / "tiny.yaml")


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}"
    return proc


def test_lightning_script_is_ours():
    installed = Path(sys.executable).with_name("lightning")
    assert "lightning_modules.cli" in installed.read_text(), f"{installed} is not signlab's script"
    # What a user's shell finds first (possibly through a pyenv shim) must run the same CLI.
    on_path = shutil.which("lightning")
    assert on_path is not None
    proc = subprocess.run([on_path, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "signlab" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_fit_writes_run_folder_and_wandb_config(tmp_path):
    _ok(run_cli(["fit", "--config", TINY], cwd=tmp_path))
    run = tmp_path / "runs" / "tiny"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 16  # 2 epochs x 8 batches
    config, history = read_offline_run(offline_runs(run)[0])
    assert config["model"]["class_path"] == "tests.cli_fixtures.tiny.TinyRegressor"
    assert config["trainer"]["default_root_dir"] == "runs/tiny"  # the omegaconf interpolation resolved
    assert len(history["val/loss"]) == 2


def test_the_lightning_command_flushes_denormal_floats(tmp_path):
    # in-process, the same arithmetic keeps the denormal (pytest's own float mode is not touched)
    assert (torch.tensor(1e-39) * 1.0).item() != 0.0
    probe = tmp_path / "probe.txt"
    _ok(run_cli(["fit", "--config", TINY, "--trainer.max_epochs", "1", "--trainer.callbacks+=tests.cli_fixtures.tiny.DenormalProbe",
                 "--trainer.callbacks.path", str(probe)], cwd=tmp_path))
    assert probe.read_text() == "0.0"


@pytest.mark.slow
def test_resume_last_continues_and_second_run_in_same_folder(tmp_path):
    _ok(run_cli(["fit", "--config", TINY], cwd=tmp_path))
    # A second run in the same folder must not trip over the saved config (Lightning #7679).
    _ok(run_cli(["fit", "--config", TINY, "--trainer.max_epochs", "3", "--ckpt_path", "last"], cwd=tmp_path))
    ckpt = torch.load(tmp_path / "runs/tiny/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    # Continued, not restarted from scratch: 3 epochs of 8 optimizer steps in all.
    assert ckpt["global_step"] == 24
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 3
    assert "lr_schedulers" in ckpt and ckpt["optimizer_states"][0]["state"]


@pytest.mark.slow
def test_last_checkpoint_follows_the_run_when_the_metric_stops_improving(tmp_path):
    # mode max on a falling loss: only epoch 0 is "best", yet last.ckpt must hold the final step.
    _ok(run_cli(["fit", "--config", TINY, "--trainer.max_epochs", "3", "--checkpoint.mode", "max"], cwd=tmp_path))
    ckpt = torch.load(tmp_path / "runs/tiny/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 24
    assert sorted(p.name for p in (tmp_path / "runs/tiny/checkpoints").glob("epoch*.ckpt")) == ["epoch=0-step=8.ckpt"]
    # A later process evaluates that best checkpoint by name, not the last one.
    proc = _ok(run_cli(["test", "--config", TINY, "--checkpoint.mode", "max", "--ckpt_path", "best"], cwd=tmp_path))
    assert "epoch=0-step=8.ckpt" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("which", ["last", "best"])
def test_resume_without_checkpoint_names_the_folder(tmp_path, which):
    proc = run_cli(["fit", "--config", TINY, "--ckpt_path", which], cwd=tmp_path)
    assert proc.returncode != 0
    expected = str((tmp_path / "runs" / "tiny" / "checkpoints").resolve())
    assert expected in proc.stderr
    assert not (tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_command_line_init_args_win_over_a_checkpoint_file(tmp_path):
    # Lightning 2.6 would re-apply the checkpoint's saved lr (0.05) over the command line's
    _ok(run_cli(["fit", "--config", TINY, "--trainer.max_epochs", "1"], cwd=tmp_path))
    ckpt = tmp_path / "runs/tiny/checkpoints/last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]["lr"] == 0.05
    _ok(run_cli(["test", "--config", TINY, "--ckpt_path", str(ckpt), "--model.init_args.lr", "0.123"], cwd=tmp_path))
    config = yaml.safe_load((tmp_path / "runs/tiny/config.yaml").read_text())
    assert config["model"]["init_args"]["lr"] == 0.123


@pytest.mark.slow
def test_wandb_mode_from_environment_wins(tmp_path):
    _ok(run_cli(["fit", "--config", TINY, "--trainer.max_epochs", "1"], cwd=tmp_path,
                env={"WANDB_MODE": "disabled"}))
    assert (tmp_path / "runs/tiny/checkpoints/last.ckpt").is_file()
    assert offline_runs(tmp_path / "runs" / "tiny") == []


def test_print_config_merges_configs_left_to_right(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("model:\n  init_args:\n    lr: 0.123\ntrainer:\n  max_epochs: 7\n")
    proc = _ok(run_cli(["fit", "--config", TINY, "--config", str(override), "--print_config"], cwd=tmp_path))
    assert "lr: 0.123" in proc.stdout and "max_epochs: 7" in proc.stdout
    assert "save_last: true" in proc.stdout  # the run-folder checkpoint defaults are part of every config


def test_overriding_the_run_folder_moves_everything_interpolated_from_it(tmp_path):
    # Interpolations resolve on the merged config, so the W&B folder follows a command-line
    # `default_root_dir` instead of staying at the YAML's value.
    proc = _ok(run_cli(["fit", "--config", TINY, "--trainer.default_root_dir", "runs/elsewhere",
                        "--print_config"], cwd=tmp_path))
    config = yaml.safe_load(proc.stdout)
    assert config["trainer"]["default_root_dir"] == "runs/elsewhere"
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == "runs/elsewhere"


@pytest.mark.parametrize("validate", [True, False])
def test_no_step_checkpoint_on_a_batch_that_validation_follows(tmp_path, validate):
    """A checkpoint from before an epoch-end validation cannot resume exactly if the run dies in
    that validation (Lightning does not rerun it): the step checkpoint leaves that batch to the
    validation-end `last.ckpt`, and the previous step checkpoint is the exact fallback."""
    from lightning.pytorch import Trainer

    from lightning_modules.cli import StepCheckpoint
    from tests.cli_fixtures.tiny import TinyData, TinyRegressor

    step = StepCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, callbacks=[step],
                      limit_val_batches=1.0 if validate else 0)
    trainer.fit(TinyRegressor(), TinyData())  # 8 batches per epoch
    saved = sorted(int(p.stem.split("=")[1]) for p in tmp_path.glob("step=*.ckpt"))
    assert saved == ([4, 12] if validate else [4, 8, 12, 16])
