"""GeoSignTranslator: parameter split, α schedule under accumulation, inference without geometry."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

import geometry
from datamodules.keypoints import PART_NAMES
from lightning_modules.poincare_disk import disk_coordinates
from tests.geosign_models import random_batch, tiny_model
from translation.hyperbolic_branch import LossBlend


def test_parameter_split_covers_everything_once():
    model = tiny_model("token")
    hyp = {id(p) for p in model.hyperbolic_parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in hyp}
    for expected in ("hyperbolic.curvature", "hyperbolic.contrastive", "hyperbolic.attention", "blend.logit",
                     "hyperbolic.part_proj.weight", "hyperbolic.text_proj.log_scale"):
        assert any(n.startswith(expected) for n in names), (expected, names)
    assert not any(n.startswith(("lm.", "encoder.")) for n in names)
    assert tiny_model(None).hyperbolic_parameters() == []
    # weight decay on the branch's matrices only: never a bias (the grouped part projection's is 2-D)
    model._trainer = SimpleNamespace(  # what the schedule reads
        estimated_stepping_batches=10, num_training_batches=10, accumulate_grad_batches=1,
        fit_loop=SimpleNamespace(setup_data=lambda: None))
    decayed, plain = model.configure_optimizers()["optimizer"].optimizers[1].param_groups
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] > 0 and plain["weight_decay"] == 0.0
    assert {by_id[id(p)] for p in decayed["params"]} == {
        "hyperbolic.part_proj.weight", "hyperbolic.text_proj.weight", "hyperbolic.attention.M_key"}


def test_alpha_schedule_formula():
    blend = LossBlend(alpha_init=0.7)
    assert float(blend(0.0).detach()) == pytest.approx(0.8)  # 0.7 + 0.2·σ(0)
    assert float(blend(1.0)) == pytest.approx(0.9)
    with torch.no_grad():
        blend.logit.fill_(50.0)
    assert float(blend(1.0)) == pytest.approx(1.0)  # clamped


class _Record(Callback):
    def __init__(self):
        self.progress, self.alpha = [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.progress.append(module.progress())  # what training_step sees
        self.alpha.append(float(module.blend(self.progress[-1])))  # the α it blends with


def test_alpha_progress_counts_optimizer_steps_under_accumulation(tmp_path):
    model = tiny_model("pooled", warmup_epochs=0)
    batches = [random_batch(seed=i) for i in range(32)]
    loader = DataLoader(batches, batch_size=None)
    record = _Record()
    trainer = Trainer(max_epochs=1, accumulate_grad_batches=8, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0,
                      callbacks=[record], default_root_dir=tmp_path)
    trainer.fit(model, loader)
    assert trainer.global_step == 4
    # 32 micro-batches = 4 optimizer steps: progress climbs to 3/4 before the last step, never past 1,
    # so α stays below the clamp and the hyperbolic term keeps its weight to the end.
    assert max(record.progress) == pytest.approx(3 / 4)
    assert max(record.alpha) < 0.95


class _LearningRates(Callback):
    def __init__(self) -> None:
        self.lr: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("limits", [dict(max_steps=12, max_epochs=-1), dict(max_steps=12, max_epochs=40)])
def test_warmup_lasts_warmup_epochs_when_max_steps_ends_the_run(tmp_path, limits):
    model = tiny_model("token", warmup_epochs=2, lr=1e-3, min_lr=1e-5)
    loader = DataLoader([random_batch(seed=i) for i in range(6)], batch_size=None)  # 3 steps per epoch
    record = _LearningRates()
    trainer = Trainer(accumulate_grad_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=[record], default_root_dir=tmp_path,
                      **limits)
    trainer.fit(model, loader)
    steps = record.lr[::2]  # one LR per optimizer step
    assert len(steps) == 12
    # 2 epochs of 3 steps warm up linearly to the peak; then the cosine decays towards max_steps
    assert steps[:7] == pytest.approx([1e-3 * k / 6 for k in range(1, 7)] + [1e-3])
    assert steps[6:] == sorted(steps[6:], reverse=True) and steps[-1] < 1e-3


def test_inference_runs_no_geometry():
    model = tiny_model("token").eval()
    batch = random_batch()
    geometry_dir = str(Path(geometry.__file__).parent)
    calls = []

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(geometry_dir):
            calls.append(frame.f_code.co_name)

    sys.setprofile(tracer)
    try:
        hyps = model.translate(batch)
    finally:
        sys.setprofile(None)
    assert len(hyps) == 4 and all(isinstance(h, str) for h in hyps)
    assert calls == []
    # Sanity check of the tracer itself: the training loss does run geometry.
    sys.setprofile(tracer)
    try:
        model.train()
        embeds, parts = model._encode(batch)
        out = model.lm(embeds, batch["frame_mask"], batch["target_ids"], batch["target_mask"])
        model.hyperbolic(parts, batch["frame_mask"], out.decoder_hidden, batch["target_mask"])
    finally:
        sys.setprofile(None)
    assert "expmap0" in calls


@pytest.mark.parametrize("mode", [None, "pooled", "token"])
def test_training_step_gradients_reach_both_branches(mode):
    model = tiny_model(mode)
    batch = random_batch()
    embeds, parts = model._encode(batch)
    out = model.lm(embeds, batch["frame_mask"], batch["target_ids"], batch["target_mask"])
    loss = out.loss
    if mode:
        loss_hyp, logs = model.hyperbolic(parts, batch["frame_mask"], out.decoder_hidden, batch["target_mask"])
        loss = 0.7 * loss + 0.3 * loss_hyp
        assert torch.isfinite(loss_hyp) and {"curvature", "tau", "margin", "pos_dist", "dist0_left"} <= set(logs)
    loss.backward()
    assert model.encoder.out.weight.grad is not None
    if mode:
        assert model.hyperbolic.curvature.parameters().__next__().grad is not None
        assert model.encoder.streams["body"].parameters().__next__().grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["pooled", "token"])
def test_branch_without_diagnostics_gives_the_same_loss_and_no_dist0(mode):
    model = tiny_model(mode)
    batch = random_batch()
    _, parts = model._encode(batch)
    hidden = torch.randn(4, batch["target_ids"].shape[1], model.lm.d_model)
    loss, logs = model.hyperbolic(parts, batch["frame_mask"], hidden, batch["target_mask"])
    quiet_loss, quiet_logs = model.hyperbolic(parts, batch["frame_mask"], hidden, batch["target_mask"],
                                              diagnostics=False)
    assert quiet_loss.item() == loss.item()
    assert {f"dist0_{p}" for p in PART_NAMES} <= set(logs) and not any(k.startswith("dist0") for k in quiet_logs)
    assert ("tau_attn" in logs) == (mode == "token") and "tau_attn" not in quiet_logs


def test_masked_mean_ignores_padding_in_part_embeddings():
    model = tiny_model("pooled")
    batch = random_batch()
    _, parts = model._encode(batch)
    h = model.hyperbolic.part_embeddings(parts, batch["frame_mask"])
    changed = {p: f.clone() for p, f in parts.items()}
    for f in changed.values():
        f[~batch["frame_mask"]] = 100.0  # garbage at padded frames
    torch.testing.assert_close(model.hyperbolic.part_embeddings(changed, batch["frame_mask"]), h)


def test_disk_coordinates_stay_in_the_disk_and_keep_the_origin():
    c = torch.tensor(1.5)
    x = geometry.expmap0(torch.randn(50, 4, 16) * 2, c)
    xy = disk_coordinates(x, c)
    assert xy.shape == (50, 4, 2)
    assert float(xy.norm(dim=-1).max()) < float(c.rsqrt())
    origin = disk_coordinates(torch.zeros(3, 4, 16), c)
    assert float(origin.abs().max()) == 0.0


def test_compile_hyperbolic_compiles_in_place_and_keeps_checkpoint_keys():
    plain, compiled = tiny_model("token"), tiny_model("token", compile_hyperbolic=True)
    assert compiled.hyperbolic._compiled_call_impl is not None and plain.hyperbolic._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())


def test_branch_diagnostics_are_logged_on_the_loggers_steps_only(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger

    model = tiny_model("pooled", warmup_epochs=0)
    calls: list[set[str]] = []
    log_dict = model.log_dict
    monkeypatch.setattr(model, "log_dict", lambda metrics, **kw: (calls.append(set(metrics)), log_dict(metrics, **kw)))
    trainer = Trainer(max_steps=6, log_every_n_steps=3, logger=CSVLogger(tmp_path), enable_checkpointing=False,
                      enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0,
                      default_root_dir=tmp_path)
    trainer.fit(model, DataLoader([random_batch(seed=i) for i in range(6)], batch_size=None))
    diagnostics = {"train/loss_hyp", "hyp/alpha", "hyp/curvature", "hyp/tau", "hyp/pos_dist", "hyp/dist0_face"}
    assert len(calls) == 6
    for step, keys in enumerate(calls):
        assert {"train/loss", "train/loss_ce"} <= keys, step  # every step (callback_metrics)
        assert (diagnostics <= keys) == (step % 3 == 2), (step, keys)  # only when the logger writes
    rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "hyp/curvature" in rows[0]  # header + steps 2 and 5, every column filled
    assert all(cell != "" for row in rows[1:] for cell in row.split(","))
    for row in rows[1:]:  # the objective is the α blend of Eq. 9
        v = {k: float(x) for k, x in zip(rows[0].split(","), row.split(","))}
        blend = v["hyp/alpha"] * v["train/loss_ce"] + (1 - v["hyp/alpha"]) * v["train/loss_hyp"]
        assert v["train/loss"] == pytest.approx(blend, rel=1e-5)
