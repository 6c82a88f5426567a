"""PoseVQVAE LightningModule: demo fit, logged metrics, checkpoint reload, images, schedule."""
from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from generation import render
from lightning_modules import media
from lightning_modules.pose_vqvae import PoseVQVAE

TINY = dict(hidden=32, layers=1, heads=2, codebook_size=32, spl_hidden=16, warmup_steps=5, lr=3e-3)


def _sine_batches(num_batches: int, seed: int, batch_size: int = 4, t_max: int = 12) -> list[dict]:
    """Batches shaped like GlossToPoseDataModule's: smooth sine-wave joints, zero padding."""
    g = torch.Generator().manual_seed(seed)
    freq = torch.rand(50, 3, generator=torch.Generator().manual_seed(0)) + 0.5  # shared across batches
    batches = []
    for i in range(num_batches):
        lengths = torch.randint(t_max // 2, t_max + 1, (batch_size,), generator=g)
        lengths[0] = t_max
        mask = torch.arange(t_max)[None] < lengths[:, None]  # (B, T)
        phase = torch.rand(batch_size, 1, 1, 1, generator=g) * 2 * math.pi
        t = torch.arange(t_max, dtype=torch.float32)[None, :, None, None]
        poses = 0.3 * torch.sin(0.5 * freq * t + phase) * mask[..., None, None]  # (B, T, 50, 3)
        batches.append({"poses": poses, "pose_mask": mask, "name": [f"seq{i}_{b}" for b in range(batch_size)],
                        "text": [""] * batch_size})
    return batches


def _loader(batches: list[dict]) -> DataLoader:
    return DataLoader(batches, batch_size=None)  # items are ready-made batch dicts


def _trainer(max_steps: int, **kw) -> Trainer:
    defaults = dict(max_steps=max_steps, logger=False, enable_checkpointing=False, accelerator="cpu",
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return Trainer(**(defaults | kw))


@pytest.mark.slow
def test_demo_fit_reduces_reconstruction_error_and_logs_metrics():
    torch.manual_seed(0)
    model = PoseVQVAE(**TINY)
    train, val = _loader(_sine_batches(8, seed=1)), _loader(_sine_batches(2, seed=2))
    trainer = _trainer(max_steps=120, check_val_every_n_epoch=15)
    before = trainer.validate(model, val, verbose=False)[0]["val/rec_mse"]
    trainer.fit(model, train, val)
    metrics = trainer.callback_metrics
    after = metrics["val/rec_mse"].item()
    assert after < 0.3 * before, (before, after)
    for key in ("train/loss", "train/rec", "train/commit", "val/rec_mse_body", "val/rec_mse_left_hand",
                "val/rec_mse_right_hand", "vq/perplexity", "vq/usage", "vq/dead_codes"):
        assert key in metrics, key
    assert 1.0 <= metrics["vq/perplexity"] <= 3 * 32 and 0 < metrics["vq/usage"] <= 1
    # Table 2a metric is the plain mean over the 150 values: the three parts weighted by joint count
    parts = [metrics[f"val/rec_mse_{p}"] for p in ("body", "left_hand", "right_hand")]
    torch.testing.assert_close(metrics["val/rec_mse"], (8 * parts[0] + 21 * parts[1] + 21 * parts[2]) / 50)


def test_checkpoint_reload_rebuilds_the_same_tokenizer(tmp_path):
    torch.manual_seed(0)
    model = PoseVQVAE(variant="joint", shared_codebook=True, **TINY)
    trainer = _trainer(max_steps=2)
    trainer.fit(model, _loader(_sine_batches(2, seed=1)))
    decayed, plain = trainer.optimizers[0].param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    assert {"model.patch_embed.0.weight", "model.spl.0.levels.1.w_anc"} <= decayed_names
    assert not decayed_names & {"model.encoder.norm.weight", "model.encoder.part_embed", "model.spl.0.levels.1.b_out"}
    assert not any(n.endswith("bias") for n in decayed_names)
    assert decayed["lr"] == pytest.approx(TINY["lr"] * 3 / TINY["warmup_steps"])  # 2 steps into warm-up
    path = tmp_path / "vq.ckpt"
    trainer.save_checkpoint(path)
    loaded = PoseVQVAE.load_from_checkpoint(path).eval()
    model.eval()
    assert loaded.hparams.variant == "joint" and loaded.num_parts == 1 and loaded.num_codes == 32
    batch = _sine_batches(1, seed=5)[0]
    codes = loaded.encode(batch["poses"], batch["pose_mask"])
    assert torch.equal(codes, model.encode(batch["poses"], batch["pose_mask"]))
    assert codes.shape == (4, 12, 1)
    torch.testing.assert_close(loaded.decode(codes, batch["pose_mask"]), model.decode(codes, batch["pose_mask"]))


def test_reconstruction_images_go_to_the_logger(tmp_path, monkeypatch):
    drawn, logged, real_render = [], [], render.render_strip

    def fake_render(rows, num_frames=8, title=None):
        drawn.append((rows, title))
        return real_render(rows, num_frames=2, title=title)

    def fake_log(module, key, fig):
        logged.append(key)
        media.plt.close(fig)

    monkeypatch.setattr(render, "render_strip", fake_render)
    monkeypatch.setattr(media, "log_figure", fake_log)
    model = PoseVQVAE(num_image_samples=2, **TINY)
    batches = _sine_batches(1, seed=3)
    _trainer(max_steps=1, logger=CSVLogger(tmp_path)).validate(model, _loader(batches), verbose=False)
    assert logged == ["val/reconstruction_0", "val/reconstruction_1"]
    (rows, title), mask = drawn[1], batches[0]["pose_mask"][1]
    assert title == "seq0_1"
    assert set(rows) == {"ground truth", "reconstruction"}
    assert rows["ground truth"].shape == (int(mask.sum()), 50, 3)  # padding cut off
    torch.testing.assert_close(torch.from_numpy(rows["ground truth"]), batches[0]["poses"][1][mask])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="variant"):
        PoseVQVAE(variant="both")
    with pytest.raises(ValueError, match="recon_loss"):
        PoseVQVAE(recon_loss="huber")
