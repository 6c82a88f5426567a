"""Dashboards through the `lightning` script: the CSV and TensorBoard overlays log the keys W&B gets
and keep `config.yaml` in the run folder, CSV media land as files, and validate/test after a fit
log into the fit's W&B run."""
from __future__ import annotations

import csv
import importlib.util
import sys

import pytest
import yaml

from lightning_modules.cli import SignLabCLI
from tests.cli_runs import GEOSIGN_TOKEN, REPO, TINY_GEOSIGN, ok, run_cli
from tests.wandb_offline import offline_runs, read_offline_run, run_exited

TINY = str(REPO / "tests" / "cli_fixtures" / "tiny.yaml")
CSV = str(REPO / "experiments" / "loggers" / "csv.yaml")
TENSORBOARD = str(REPO / "experiments" / "loggers" / "tensorboard.yaml")
# W&B's own history fields, and the step column CSVLogger adds
BOOKKEEPING = {"trainer/global_step", "_step", "_runtime", "_timestamp", "step"}


def _csv_rows(path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r[key] != ""]


@pytest.mark.slow
def test_csv_overlay_on_a_demo_fit(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_GEOSIGN)  # 2 epochs of 6 steps, logged every step
    ok(run_cli(["fit", "--config", GEOSIGN_TOKEN, "--config", "tiny.yaml", "--config", CSV], cwd=tmp_path))
    run = tmp_path / "runs" / "demo_geosign_token"
    logs = run / "csv" / "version_0"
    rows = _csv_rows(logs / "metrics.csv")
    assert {"train/loss", "train/loss_ce", "train/loss_hyp", "hyp/alpha", "train/skipped_steps",
            "lr/euclidean", "lr/hyperbolic", "val/loss_ce", "val/bleu4", "val/rougeL"} <= set(rows[0])
    assert len(_column(rows, "val/loss_ce")) == 2 and all(v > 0 for v in _column(rows, "val/loss_ce"))
    # The demo's schedule: warm-up over half an epoch (3 steps) for AdamW, Riemannian Adam constant.
    hp = yaml.safe_load(open(GEOSIGN_TOKEN))["model"]["init_args"]
    euclidean = _column(rows, "lr/euclidean")
    assert len(euclidean) == 12
    assert euclidean[:3] == pytest.approx([hp["lr"] / 3, 2 * hp["lr"] / 3, hp["lr"]])
    assert _column(rows, "lr/hyperbolic") == pytest.approx([hp["hyp_lr"]] * 12)

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    assert not (logs / "config.yaml").exists() and not (run / "wandb").exists()
    # The media, one file per validation (after steps 6 and 12).
    with (logs / "media" / "val" / "samples" / "step_12.csv").open(newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["name", "reference", "hypothesis"] and len(table) == 1 + 6  # 6 dev samples
    pictures = sorted((logs / "media" / "val" / "poincare_disk").iterdir())
    assert [p.name for p in pictures] == ["step_12.png", "step_6.png"]
    assert pictures[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _tensorboard_scalars(folder) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_every_logger_gets_the_same_keys_and_the_run_folder_the_config(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    keys = {}
    for name, overlay in (("wandb", []), ("csv", ["--config", CSV]), ("tensorboard", ["--config", TENSORBOARD])):
        ok(run_cli(["fit", "--config", TINY, *overlay, "--trainer.log_every_n_steps", "4",
                    "--trainer.default_root_dir", f"runs/{name}"], cwd=tmp_path))
        run = tmp_path / "runs" / name
        assert (run / "config.yaml").is_file(), name
        if name == "wandb":
            _, history = read_offline_run(offline_runs(run)[0])
            assert history["lr"] == [0.05] * 4  # steps 3, 7, 11, 15 of 16; the StepLR steps per epoch
        elif name == "csv":
            rows = _csv_rows(run / "csv" / "version_0" / "metrics.csv")
            history = {key: _column(rows, key) for key in rows[0]}
        else:
            history = _tensorboard_scalars(run / "tensorboard" / "version_0")
        keys[name] = set(history) - BOOKKEEPING
    assert keys["wandb"] == {"epoch", "lr", "train/loss", "train/skipped_steps", "val/loss"}
    assert keys["csv"] == keys["wandb"] and keys["tensorboard"] == keys["wandb"]


def test_tensorboard_overlay_without_tensorboard_says_how_to_get_it(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else find_spec(name, *a))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[tensorboard\]'"):
        SignLabCLI(args=["fit", "--config", TINY, "--config", TENSORBOARD])
    assert not (tmp_path / "runs").exists()  # stopped before anything was built


@pytest.mark.slow
def test_validate_and_test_after_a_fit_log_into_its_wandb_run(tmp_path):
    ok(run_cli(["fit", "--config", TINY, "--trainer.max_epochs", "1"], cwd=tmp_path))
    run = tmp_path / "runs" / "tiny"
    fit_id = (run / "wandb_id").read_text().strip()
    ok(run_cli(["test", "--config", TINY, "--ckpt_path", "best"], cwd=tmp_path))
    ok(run_cli(["validate", "--config", TINY], cwd=tmp_path))  # no checkpoint: the run folder's fit
    ok(run_cli(["test", "--config", TINY, "--ckpt_path", "last", "--new_wandb_run", "true"], cwd=tmp_path))
    # Offline, W&B writes a folder per process (`offline-run-<time>-<run id>`) and syncs them by id.
    fit, test, validate, fresh = offline_runs(run)
    assert [r.name.rsplit("-", 1)[1] for r in (fit, test, validate)] == [fit_id] * 3
    assert fresh.name.rsplit("-", 1)[1] != fit_id
    assert (run / "wandb_id").read_text().strip() == fit_id  # only a fit names the folder's run
    config, history = read_offline_run(test)
    assert len(history["test/loss"]) == 1
    # The resolved config under its own key, so the run's `trainer`, `model`, `data` stay the fit's.
    assert "test" in config and not {"trainer", "model", "data"} & set(config)
    assert config["test"]["ckpt_path"] == "best"
    assert len(read_offline_run(validate)[1]["val/loss"]) == 1
    fresh_config, fresh_history = read_offline_run(fresh)
    assert "test/loss" in fresh_history and "test" in fresh_config


def test_the_cli_finishes_its_wandb_run_before_it_returns(tmp_path, monkeypatch):
    """In one process (as under a parent that shares its wandb service), a command that returned
    without finishing its run would leave it open: the next command of the same run finds the id
    in use and the offline file has no exit record."""
    import wandb

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(sys, "argv", ["lightning"])  # pytest's own arguments are not the CLI's
    # wandb reads its environment once per process; an earlier in-process run (tests/test_benchmarks)
    # would leave its online default in place of the offline mode the YAML's logger sets
    wandb.teardown()
    SignLabCLI(args=["fit", "--config", TINY, "--trainer.max_epochs", "1"])
    assert wandb.run is None
    run = offline_runs(tmp_path / "runs" / "tiny")[0]
    assert run_exited(run) and read_offline_run(run)[1]["val/loss"]  # finished, with what the fit logged
