"""The demo Geo-Sign configs end to end through the `lightning` script: fit, test, predict, and
what an offline W&B run records (the dashboards researchers watch)."""
from __future__ import annotations

import csv

import pytest
import torch
import yaml

from tests.cli_runs import REPO, run_cli
from tests.wandb_offline import offline_runs, read_offline_run

# Same experiment, shrunk so that a fit takes seconds: a 40-video SynthSign, a tiny mT5 and encoder.
TINY = {
    "trainer": {"max_epochs": 2, "log_every_n_steps": 1},
    "model": {"init_args": {
        "mt5_config": {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
                       "d_kv": 16},
        "encoder": {"hidden": [8, 8, 16, 16], "temporal_blocks": 1},
        "hyp_dim": 16, "num_beams": 2, "max_new_tokens": 8}},
    "data": {"init_args": {"data_dir": "synth", "batch_size": 8, "num_workers": 0,
                           "synthsign_kwargs": {"num_train": 24, "num_dev": 10, "num_test": 10}}},
}
HYPERBOLIC_KEYS = {"train/loss_ce", "train/loss_hyp", "train/loss", "hyp/alpha", "hyp/curvature", "hyp/tau",
                   "hyp/margin", "hyp/pos_dist", "hyp/dist0_body", "hyp/dist0_left", "hyp/dist0_right",
                   "hyp/dist0_face"}


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["geosign_token", "geosign_pooled", "unisign_pose"])
def test_demo_fit_test_predict_and_dashboard(name, tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    config = ["--config", str(REPO / "experiments/demo" / f"{name}.yaml"), "--config", "tiny.yaml"]
    _ok(run_cli(["fit", *config], cwd=tmp_path))
    run = tmp_path / "runs" / f"demo_{name}"
    assert (run / "checkpoints" / "last.ckpt").is_file()

    config_logged, history = read_offline_run(offline_runs(run)[0])
    assert config_logged["model"]["init_args"]["hyperbolic"] == {"geosign_token": "token", "geosign_pooled": "pooled",
                                                                 "unisign_pose": None}[name]
    keys = set(history)
    assert {"train/loss", "train/loss_ce", "val/bleu1", "val/bleu4", "val/rougeL", "val/samples"} <= keys
    if name == "unisign_pose":
        assert not keys & {"train/loss_hyp", "hyp/alpha", "hyp/curvature"}
    else:
        assert HYPERBOLIC_KEYS <= keys
        assert history["val/poincare_disk"][0]["_type"] == "image-file"
        assert all(0.1 <= a <= 1.0 for a in history["hyp/alpha"])
        assert all(c > 0 for c in history["hyp/curvature"])
        if name == "geosign_token":
            assert "hyp/tau_attn" in keys
    assert len(history["val/bleu4"]) == 2  # one validation per epoch
    assert history["val/samples"][0]["_type"] == "table-file" and history["val/samples"][0]["ncols"] == 3
    # Weights and both optimisers in the checkpoint; hyperbolic parameters trained.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert len(ckpt["optimizer_states"][0]["optimizers"]) == (1 if name == "unisign_pose" else 2)

    if name != "geosign_token":
        return
    # test reports dev and test (Uni-Sign's protocol); predict writes one row per test sample.
    proc = run_cli(["test", *config, "--ckpt_path", "last"], cwd=tmp_path)
    _ok(proc)
    assert "test/dev/bleu4" in proc.stdout and "test/test/bleu4" in proc.stdout
    _ok(run_cli(["predict", *config, "--ckpt_path", "last"], cwd=tmp_path))
    with (run / "predictions.tsv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 10 and len({r["name"] for r in rows}) == 10
    assert all(r["reference"] for r in rows)
