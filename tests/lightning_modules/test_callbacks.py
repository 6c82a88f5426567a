"""Reliability callbacks and the atomic CheckpointIO, in process on tiny models."""
from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.callbacks import (BadSampleReport, NonFiniteGuard, ResumeState, grads_finite, rng_state,
                                        set_rng_state)
from lightning_modules.checkpoint_io import (AtomicCheckpointIO, CorruptCheckpointError, atomic_torch_save,
                                             load_checkpoint_file)
from tests.cli_runs import REPO, TINY_GEOSIGN_MODEL, run_cli


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leave a cached Gaussian in numpy's state
    state = rng_state()
    expected = _draws()
    atomic_torch_save(state, tmp_path / "rng.pt")
    _draws()  # move every generator on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected


def test_resume_state_restores_rng_at_the_first_training_batch_not_at_load():
    callback = ResumeState()
    torch.manual_seed(0)
    saved = callback.state_dict()
    expected = torch.rand(4)
    callback.load_state_dict(saved)
    torch.rand(1)  # e.g. the DataLoader drawing its base seed while the iterator is built
    callback.on_train_batch_start(None, None, None, 0)
    assert torch.equal(torch.rand(4), expected)
    torch.manual_seed(5)
    callback.on_train_batch_start(None, None, None, 1)  # applied once only
    assert not torch.equal(torch.rand(4), expected)


def test_grads_finite():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    assert grads_finite([a, b])  # no grads at all
    a.grad = torch.ones(3)
    assert grads_finite([a, b])
    b.grad = torch.tensor([1.0, float("inf")])
    assert not grads_finite([a, b])
    b.grad = torch.tensor([float("nan"), 0.0])
    assert not grads_finite([a, b])


class _Poisoned(LightningModule):
    """Linear regression whose loss (or only a gradient) turns NaN at chosen batches."""

    def __init__(self, nan_loss_at: set[int], nan_grad_at: set[int]):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.nan_loss_at, self.nan_grad_at = nan_loss_at, nan_grad_at
        self.snapshots: list[tuple[torch.Tensor, dict]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.snapshots.append((self.net.weight.detach().clone(), self._adam_state()))
        out = self.net(x).squeeze(-1)
        if batch_idx in self.nan_grad_at:  # adds 0 to the loss, but d/db sqrt(|b - b|) is NaN
            out = out + torch.sqrt((self.net.bias - self.net.bias.detach()).abs()).sum()
        loss = torch.nn.functional.mse_loss(out, y)
        assert torch.isfinite(loss) or batch_idx in self.nan_loss_at
        return loss * float("nan") if batch_idx in self.nan_loss_at else loss

    def _adam_state(self) -> dict:
        state = self.trainer.optimizers[0].state.get(self.net.weight, {}) if self._trainer else {}
        return {k: v.clone() for k, v in state.items()}

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)


def _fit(model: LightningModule, steps: int, **trainer_kwargs) -> Trainer:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(-1)), batch_size=4)
    trainer = Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[NonFiniteGuard()], **trainer_kwargs)
    trainer.fit(model, data)
    return trainer


@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_non_finite_step_is_skipped_counted_and_logged(poison):
    model = _Poisoned(nan_loss_at={2} if poison == "loss" else set(), nan_grad_at={2} if poison == "grad" else set())
    trainer = _fit(model, steps=5, gradient_clip_val=1.0)
    weights = [w for w, _ in model.snapshots] + [model.net.weight.detach()]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.equal(weights[2], weights[3])  # the poisoned step changed nothing ...
    state_before, state_after = model.snapshots[2][1], model.snapshots[3][1]
    assert state_before.keys() == state_after.keys() and all(torch.equal(state_before[k], state_after[k])
                                                             for k in state_before)  # ... not even Adam's moments
    assert not torch.equal(weights[1], weights[2]) and not torch.equal(weights[3], weights[4])  # the others train
    guard = next(cb for cb in trainer.callbacks if isinstance(cb, NonFiniteGuard))
    assert guard.skipped == 1 and guard.state_dict() == {"skipped": 1}
    assert trainer.callback_metrics["train/skipped_steps"] == 1.0
    assert trainer.global_step == 5


def test_non_finite_guard_under_bf16_autocast():
    model = _Poisoned(nan_loss_at={1}, nan_grad_at=set())
    trainer = _fit(model, steps=3, precision="bf16-mixed")
    assert trainer.callback_metrics["train/skipped_steps"] == 1.0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_atomic_save_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, path)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process dies in the middle of writing

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert load_checkpoint_file(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left behind


def test_checkpoint_io_round_trip_and_truncated_file_is_named(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(3.0)}, "global_step": 7}, path)
    assert io.load_checkpoint(path)["global_step"] == 7
    data = path.read_bytes()
    for broken in (data[: len(data) // 2], b""):
        path.write_bytes(broken)
        with pytest.raises(CorruptCheckpointError, match=str(path)):
            io.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        io.load_checkpoint(tmp_path / "nothing.ckpt")


# ------------------------------------------------------------------ bad data, end to end (CLI)

BAD_DATA = """
trainer:
  max_epochs: 1
  enable_progress_bar: false
""" + TINY_GEOSIGN_MODEL + """data:
  init_args:
    dataset: csl_daily                   # the real-data readers, on a copy of a tiny SynthSign
    label_dir: bad
    pose_dir: bad/pose_format
    max_len: 32
    batch_size: 4
    num_workers: 0
"""


def _poison_corpus(tmp_path) -> dict[str, str]:
    """A tiny SynthSign corpus in the CSL-Daily layout with four bad training pose files;
    returns {sample name: what is wrong with it}."""
    import pickle
    import shutil

    from datamodules.formats import load_pickle, read_unisign_labels
    from datamodules.synthetic import ensure_synthsign

    root = ensure_synthsign(tmp_path / "synth", num_train=12, num_dev=3, num_test=1)
    shutil.copytree(root / "unisign", tmp_path / "bad")
    labels = read_unisign_labels(tmp_path / "bad" / "labels.train")
    names = sorted(labels)[:4]
    paths = [tmp_path / "bad" / "pose_format" / f"{Path(labels[n]['video_path']).stem}.pkl" for n in names]
    good = load_pickle(paths[0])
    paths[0].write_bytes(paths[0].read_bytes()[:50])  # corrupt: cut off mid-stream
    # malicious: unpickling would run `touch pwned` through os.system
    paths[1].write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    empty = {k: (np.asarray(v)[:0] if k in ("keypoints", "scores") else v) for k, v in good.items()}
    paths[2].write_bytes(pickle.dumps(empty))  # an empty sequence
    nan = {k: np.array(v, dtype=np.float32, copy=True) if k in ("keypoints", "scores") else v for k, v in good.items()}
    nan["keypoints"][1] = np.nan  # one NaN frame
    paths[3].write_bytes(pickle.dumps(nan))
    return dict(zip(names, ["corrupt", "malicious", "empty", "nan"]))


@pytest.mark.slow
def test_bad_samples_are_skipped_and_reported_or_stop_the_run(tmp_path):
    bad = _poison_corpus(tmp_path)
    (tmp_path / "tiny.yaml").write_text(BAD_DATA)
    args = ["fit", "--config", str(REPO / "experiments/demo/geosign_token.yaml"), "--config", "tiny.yaml"]
    env = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "2"}

    skip = run_cli([*args, "--trainer.default_root_dir", "runs/skip", "--data.init_args.on_bad_sample", "skip"],
                   cwd=tmp_path, env=env)
    assert skip.returncode == 0, skip.stderr[-3000:]
    assert "skipped 4 bad samples" in skip.stdout, skip.stdout[-2000:]
    report = skip.stdout[skip.stdout.index("skipped 4 bad samples"):]
    assert all(name in report for name in bad)
    assert "unsafe 1:" in report and "invalid 3:" in report  # the malicious pickle is told apart
    listed = (tmp_path / "runs/skip/skipped_samples.tsv").read_text()
    assert all(name in listed for name in bad)
    assert (tmp_path / "runs/skip/checkpoints/last.ckpt").is_file()
    assert not (tmp_path / "pwned").exists()

    stop = run_cli([*args, "--trainer.default_root_dir", "runs/raise", "--data.init_args.on_bad_sample", "raise"],
                   cwd=tmp_path, env=env)
    assert stop.returncode != 0
    assert any(name in stop.stderr for name in bad) and ".pkl" in stop.stderr, stop.stderr[-3000:]
    assert not (tmp_path / "runs/raise/checkpoints/last.ckpt").exists()  # no step was taken
    assert not (tmp_path / "pwned").exists()


def test_bad_sample_report_is_short_for_many_skips_and_names_the_full_list(capsys, tmp_path):
    names = [f"S{i:05d}" for i in range(19000)]
    datamodule = SimpleNamespace(skipped={"missing": names, "invalid": ["B2", "B1"]}, skipped_batches=3,
                                 skip_file=tmp_path / "skipped_samples.tsv")
    BadSampleReport().on_fit_end(SimpleNamespace(datamodule=datamodule, global_rank=0), None)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "rank 0: skipped 19002 bad samples (3 batches of only bad samples left out):"
    assert out[1] == "  invalid 2: B1, B2"
    assert out[2] == "  missing 19000: S00000, S00001, S00002, S00003, S00004, ... (18995 more)"
    assert out[3] == f"  all of them: {tmp_path / 'skipped_samples.tsv'}"
    assert len(out) == 4
