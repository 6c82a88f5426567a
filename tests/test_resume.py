"""Exact resume through the `lightning` script: a run SIGKILLed mid-epoch and resumed with
`--ckpt_path last` ends where an uninterrupted run ends (parameters, both optimisers, losses)."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from lightning_modules.checkpoint_io import load_checkpoint_file
from tests.cli_runs import (GEOSIGN_TOKEN, REPO, STEP_LOG, TINY_DIFFUSION, TINY_GEOSIGN, TINY_VQVAE, ok, run_cli,
                            step_losses)
from tests.wandb_offline import offline_runs

KILL = "tests.cli_fixtures.kill_at_step.KillAtStep"

KILL_AT = 8  # optimizer steps before the kill: epoch 1, batch 2 of 6 (not an epoch boundary)
TOTAL_STEPS = 12


# Parameters and optimiser moments agree to 1e-6 (the bar an exact resume is held to). This holds
# because no parameter has a pure rounding-noise gradient (ST-GCN's convs in front of a BatchNorm
# have no bias): Adam would normalise such noise into lr-sized steps and a one-ulp difference would
# grow.
ATOL = 1e-6


def _assert_close(a, b, where: str) -> None:
    """Leaf-by-leaf comparison of nested checkpoint structures."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        torch.testing.assert_close(a.float(), b.float(), atol=ATOL, rtol=0, msg=where)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=ATOL), where
    else:
        assert a == b, where


def _crash_and_resume(cwd: Path, config: str, kill_at: int = KILL_AT) -> tuple[dict, dict, dict]:
    """Run A uninterrupted; run B SIGKILLed after step kill_at's checkpoint, then resumed with
    `--ckpt_path last`. Checks the losses and returns B's mid checkpoint and both final ones."""
    def fit(run: str, more: list[str], env: dict):
        args = ["fit", "--config", config, "--config", str(cwd / "tiny.yaml"), "--trainer.default_root_dir",
                f"runs/{run}", f"--trainer.callbacks+={STEP_LOG}", *more]
        return run_cli(args, cwd=cwd, env={"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "2", **env})

    ok(fit("A", [], {"SIGNLAB_TEST_STEP_LOG": str(cwd / "A.log")}))
    killed = fit("B", [f"--trainer.callbacks+={KILL}"],
                 {"SIGNLAB_TEST_STEP_LOG": str(cwd / "B.log"), "SIGNLAB_TEST_KILL_AT_STEP": str(kill_at)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last_b = cwd / "runs/B/checkpoints/last.ckpt"
    mid = load_checkpoint_file(last_b)
    ok(fit("B", ["--ckpt_path", "last"], {"SIGNLAB_TEST_STEP_LOG": str(cwd / "B.log")}))

    losses_a, losses_b = step_losses(cwd / "A.log"), step_losses(cwd / "B.log")
    assert sorted(losses_a) == list(range(1, TOTAL_STEPS + 1))
    assert sorted(losses_b) == list(range(1, TOTAL_STEPS + 1))  # no step repeated or lost
    for step in range(kill_at + 1, TOTAL_STEPS + 1):
        # 1e-6 relative: a float32 loss near 12 is resolved to ~1e-6 (one ulp) anyway
        assert losses_b[step] == pytest.approx(losses_a[step], rel=1e-6, abs=1e-6), f"loss at step {step}"
    end_a, end_b = load_checkpoint_file(cwd / "runs/A/checkpoints/last.ckpt"), load_checkpoint_file(last_b)
    assert end_a["global_step"] == end_b["global_step"] == TOTAL_STEPS
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        _assert_close(end_a[key], end_b[key], key)
    return mid, end_a, end_b


def _check_mid_checkpoint(mid: dict) -> None:
    assert mid["global_step"] == KILL_AT and mid["epoch"] == 1
    # The position inside the epoch and the RNG states travel with the checkpoint.
    assert mid["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": KILL_AT - 6}]
    assert set(mid["callbacks"]["ResumeState"]["rng"]) == {"torch", "numpy", "random"}


@pytest.mark.slow
def test_geosign_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_GEOSIGN)
    mid, _, end = _crash_and_resume(tmp_path, GEOSIGN_TOKEN)
    _check_mid_checkpoint(mid)
    # AdamW and Riemannian Adam both hold state, and the learnable geometry is in the weights.
    assert all(opt["state"] for opt in end["optimizer_states"][0]["optimizers"])
    geometry = [k for k in end["state_dict"] if any(s in k for s in ("curvature", "tau", "margin", "blend"))]
    assert {"blend.logit", "hyperbolic.contrastive.margin", "hyperbolic.contrastive.tau_logit"} <= set(geometry)
    assert any(not torch.equal(end["state_dict"][k], mid["state_dict"][k]) for k in geometry)  # they train


@pytest.mark.slow
def test_geosign_sigkill_at_an_epoch_boundary_then_resume_matches_uninterrupted_run(tmp_path):
    # killed at epoch 1's first batch: `last.ckpt` is the one written at epoch 0's validation end,
    # before the next epoch's RNG draw (dropout masks would differ from step 7 on if not replayed)
    (tmp_path / "tiny.yaml").write_text(TINY_GEOSIGN)
    mid, _, _ = _crash_and_resume(tmp_path, GEOSIGN_TOKEN, kill_at=6)
    assert mid["global_step"] == 6 and mid["callbacks"]["ResumeState"]["epoch_finished"] is True


@pytest.mark.slow
def test_posevq_diffusion_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    (tmp_path / "vq.yaml").write_text(TINY_VQVAE)
    ok(run_cli(["fit", "--config", str(REPO / "experiments/demo/pose_vqvae.yaml"), "--config", "vq.yaml",
                "--trainer.default_root_dir", "runs/vq"], cwd=tmp_path,
               env={"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "2"}))
    (tmp_path / "tiny.yaml").write_text(TINY_DIFFUSION)
    mid, _, end = _crash_and_resume(tmp_path, str(REPO / "experiments/demo/posevq_diffusion.yaml"))
    _check_mid_checkpoint(mid)
    assert end["optimizer_states"][0]["state"]


@pytest.mark.slow
def test_resume_continues_the_same_wandb_run(tmp_path):
    tiny = str(REPO / "tests" / "cli_fixtures" / "tiny.yaml")
    ok(run_cli(["fit", "--config", tiny, "--trainer.max_epochs", "1"], cwd=tmp_path))
    run = tmp_path / "runs" / "tiny"
    run_id = (run / "wandb_id").read_text().strip()
    assert [r.name.rsplit("-", 1)[-1] for r in offline_runs(run)] == [run_id]
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["callbacks"]["ResumeState"]["wandb_id"] == run_id
    (run / "wandb_id").unlink()  # the id in the checkpoint is enough
    ok(run_cli(["fit", "--config", tiny, "--trainer.max_epochs", "2", "--ckpt_path", "last"], cwd=tmp_path))
    # Offline W&B writes each segment to its own folder, under the same run id (synced as one run).
    assert [r.name.rsplit("-", 1)[-1] for r in offline_runs(run)] == [run_id, run_id]
    assert (run / "wandb_id").read_text().strip() == run_id


class _Keys(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 22

    def __getitem__(self, key):
        return key[0]  # the ShardSampler yields (index, epoch)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumable_loader_restarts_at_the_first_batch_the_trainer_did_not_finish(num_workers):
    from datamodules.batches import ResumableLoader, ShardSampler

    progress = {"epoch": 0, "batches": 0}  # what the trainer has restored / finished

    def loader() -> ResumableLoader:
        sampler = ShardSampler(22, shuffle=True, seed=3, epoch_fn=lambda: progress["epoch"])
        return ResumableLoader(_Keys(), sampler=sampler, batch_size=4, num_workers=num_workers,
                               consumed_fn=lambda: progress["batches"])

    epochs = [[b.tolist() for b in loader()] for progress["epoch"] in (0, 1)]
    assert epochs[0] != epochs[1] and sorted(sum(epochs[1], [])) == list(range(22))

    # Lightning builds the iterator before it restores the checkpoint (estimated_stepping_batches).
    progress.update(epoch=0, batches=0)
    resumed = loader()
    it = iter(resumed)
    progress.update(epoch=1, batches=2)  # the restore: epoch 1, two batches finished
    assert resumed.state_dict() == {"epoch": 1, "batches": 2}
    resumed.load_state_dict(resumed.state_dict())
    assert [b.tolist() for b in it] == epochs[1][2:]
    progress.update(epoch=0, batches=0)  # the next epoch starts from its first batch
    assert [b.tolist() for b in resumed] == epochs[0]
    with pytest.raises(ValueError, match="loader state"):
        resumed.load_state_dict({"samples": 3})
