"""DDP (gloo, 2 CPU processes) and bf16-mixed through the `lightning` script (Geo-Sign token and
the Pose-VQVAE → PoseVQ-Diffusion chain), plus the GPU strategy overrides as configs."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch
import yaml

from tests.cli_runs import (GEOSIGN_TOKEN, REPO, STEP_LOG, TINY_DIFFUSION, TINY_GEOSIGN, TINY_VQVAE, ok, run_cli,
                            step_losses)

PROBE = "tests.cli_fixtures.ddp_probe.GatheredDevNames"
STRATEGIES = REPO / "experiments" / "strategies"
NUM_DEV = 7  # odd, so the two ranks hold 4 and 3 dev samples


@pytest.mark.slow
def test_ddp_two_cpu_processes_score_every_dev_sample_once(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_GEOSIGN.replace("num_dev: 6", f"num_dev: {NUM_DEV}"))
    probe = tmp_path / "probe.jsonl"
    ok(run_cli(["fit", "--config", GEOSIGN_TOKEN, "--config", str(tmp_path / "tiny.yaml"),
                "--trainer.default_root_dir", "runs/ddp", "--trainer.max_epochs", "1",
                "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                "--model.init_args.gather_negatives", "true", f"--trainer.callbacks+={PROBE}"],
               cwd=tmp_path, env={"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
                                  "SIGNLAB_TEST_PROBE": str(probe)}))
    (record,) = [json.loads(line) for line in probe.read_text().splitlines()]
    assert record["world"] == 2
    assert len(record["names"]) == NUM_DEV == len(set(record["names"]))  # none dropped, none twice
    ckpt = torch.load(tmp_path / "runs/ddp/checkpoints/last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 24 // (4 * 2)  # each rank trained on its half of the 24 samples
    (best,) = [state["best_model_score"] for key, state in ckpt["callbacks"].items()
               if "'monitor': 'val/bleu4'" in key]  # the run's val/bleu4 checkpoint, whatever its class
    assert math.isfinite(best.item())


@pytest.mark.slow
def test_bf16_mixed_geosign_token_trains_with_finite_losses(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_GEOSIGN)
    ok(run_cli(["fit", "--config", GEOSIGN_TOKEN, "--config", str(tmp_path / "tiny.yaml"),
                "--trainer.default_root_dir", "runs/bf16", "--trainer.max_epochs", "1",
                "--trainer.precision", "bf16-mixed", f"--trainer.callbacks+={STEP_LOG}"],
               cwd=tmp_path, env={"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "2",
                                  "SIGNLAB_TEST_STEP_LOG": str(tmp_path / "steps.log")}))
    losses = step_losses(tmp_path / "steps.log")
    assert sorted(losses) == list(range(1, 7)) and all(math.isfinite(v) for v in losses.values())
    ckpt = torch.load(tmp_path / "runs/bf16/checkpoints/last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["callbacks"]["NonFiniteGuard"] == {"skipped": 0}
    weights = ckpt["state_dict"]
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())  # master weights
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


@pytest.mark.slow  # four spawned ranks in two fits: ~1-2 min on 2 cores
def test_production_chain_trains_under_ddp_and_bf16(tmp_path):
    """Pose-VQVAE, then PoseVQ-Diffusion on its codes, each on 2 gloo ranks in bf16-mixed: both
    finish with full-precision, finite weights, finite validation scores and each rank on half the data."""
    ddp_bf16 = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "1"]
    env = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    (tmp_path / "vq.yaml").write_text(TINY_VQVAE)
    ok(run_cli(["fit", "--config", str(REPO / "experiments/demo/pose_vqvae.yaml"), "--config", "vq.yaml",
                "--trainer.default_root_dir", "runs/vq", *ddp_bf16], cwd=tmp_path, env=env))
    (tmp_path / "tiny.yaml").write_text(TINY_DIFFUSION)
    ok(run_cli(["fit", "--config", str(REPO / "experiments/demo/posevq_diffusion.yaml"), "--config", "tiny.yaml",
                "--trainer.default_root_dir", "runs/diffusion", *ddp_bf16], cwd=tmp_path, env=env))
    for run in ("vq", "diffusion"):
        ckpt = torch.load(tmp_path / f"runs/{run}/checkpoints/last.ckpt", weights_only=False, map_location="cpu")
        assert ckpt["global_step"] == 24 // (4 * 2), run  # 24 samples, batch 4, 2 ranks
        weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
        # no bf16 leaks into the saved weights (the importance sampler's loss history is float64)
        assert all(v.dtype in (torch.float32, torch.float64) and torch.isfinite(v).all() for v in weights), run
        scores = [state["best_model_score"] for state in ckpt["callbacks"].values()
                  if isinstance(state, dict) and state.get("best_model_score") is not None]
        assert scores and all(math.isfinite(float(v)) for v in scores), run


@pytest.mark.parametrize("name", ["ddp.yaml", "deepspeed_zero2.yaml"])
def test_gpu_strategy_overrides_parse_onto_a_paper_config(capsys, monkeypatch, name):
    from lightning_modules.cli import SignLabCLI

    monkeypatch.setattr(sys, "argv", ["lightning"])  # pytest's own arguments are not the CLI's

    with pytest.raises(SystemExit) as exit_:  # --print_config prints the merged config and exits
        SignLabCLI(args=["fit", "--config", str(REPO / "experiments" / "geosign_token.yaml"),
                         "--config", str(STRATEGIES / name), "--print_config"])
    assert exit_.value.code in (0, None)
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["accelerator"] == "gpu" and trainer["devices"] == -1
    assert trainer["sync_batchnorm"] is True and trainer["use_distributed_sampler"] is False
    strategy = trainer["strategy"]
    if name == "ddp.yaml":
        assert strategy["class_path"].endswith("DDPStrategy")
    else:
        assert strategy["class_path"].endswith("DeepSpeedStrategy") and strategy["init_args"]["stage"] == 2
        assert trainer["precision"] == "bf16-mixed"


def test_stgcn_batchnorms_become_sync_batchnorm_under_ddp():
    """What `sync_batchnorm: true` does to the pose encoder (SyncBatchNorm itself runs on GPU only)."""
    from lightning.pytorch.plugins import TorchSyncBatchNorm

    from translation.stgcn import PoseEncoder

    encoder = TorchSyncBatchNorm().apply(PoseEncoder(16, hidden=(8, 8, 16, 16), temporal_blocks=1))
    kinds = {type(m) for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert kinds == {torch.nn.SyncBatchNorm}
