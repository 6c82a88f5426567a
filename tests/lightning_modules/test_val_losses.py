"""Validation losses: each model's training objective on dev batches, averaged over samples
(batches of different sizes weigh by their size)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from datamodules.batches import collate_production
from datamodules.keypoints import PART_NAMES, PT_PART_NAMES, PT_PARTS
from datamodules.production import GlossPoseDataset
from lightning_modules.back_translator import BackTranslator
from lightning_modules.pose_vqvae import PoseVQVAE
from tests.geosign_models import random_batch, tiny_model


def _validate(model, batches: list[dict]) -> dict[str, float]:
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu")
    return trainer.validate(model, DataLoader(batches, batch_size=None), verbose=False)[0]


def _sample_mean(values: list[float], batches: list[dict], key: str) -> float:
    sizes = [len(b[key]) for b in batches]
    return sum(v * n for v, n in zip(values, sizes)) / sum(sizes)


def test_pose_vqvae_val_loss_is_eq1_on_the_dev_set():
    torch.manual_seed(0)
    model = PoseVQVAE(hidden=16, layers=1, heads=2, codebook_size=16, spl_hidden=8, beta=0.25)
    g = torch.Generator().manual_seed(0)
    batches = []
    for size, frames in ((4, 9), (2, 6)):
        mask = torch.arange(frames) < torch.tensor([frames] + [frames - 2] * (size - 1))[:, None]
        batches.append({"poses": torch.randn(size, frames, 50, 3, generator=g) * mask[..., None, None],
                        "pose_mask": mask, "name": [f"s{i}" for i in range(size)]})
    logged = _validate(model, batches)["val/loss"]
    model.eval()
    expected = []
    with torch.no_grad():
        for batch in batches:
            out = model(batch["poses"], batch["pose_mask"])
            diff = (out["recon"] - batch["poses"]).abs()[batch["pose_mask"]]  # (N valid frames, 50, 3)
            # Eq. 1 with the L1 norm: per part, the mean |error| over valid frames, joints and xyz
            rec = sum(diff[:, list(PT_PARTS[part])].mean() for part in PT_PART_NAMES)
            expected.append((rec + 0.25 * out["commit"]).item())
    assert logged == pytest.approx(_sample_mean(expected, batches, "name"), rel=1e-5)


def test_back_translator_val_loss_ce_is_the_text_cross_entropy():
    torch.manual_seed(0)
    model = BackTranslator(d_model=32, heads=2, encoder_layers=1, decoder_layers=1, max_text_len=12, beam_size=1)
    rng = np.random.default_rng(0)
    glosses = model.gloss_vocab.itos[3:6]
    words = [w for w in model.tokenizer.get_vocab() if not w.startswith("<")][:3]
    samples = [{"poses": rng.normal(size=(6 * (1 + i % 3), 50, 3)).astype(np.float32),
                "gloss": glosses[: 1 + i % 3], "text": " ".join(words[: 1 + i % 3]), "name": f"s{i}"}
               for i in range(6)]
    dataset = GlossPoseDataset(samples, model.gloss_vocab)
    batches = [collate_production([dataset[i] for i in idx]) for idx in ([0, 1, 2, 3], [4, 5])]
    logged = _validate(model, batches)
    model.eval()
    with torch.no_grad():
        ce = [model.losses(batch)["ce"].item() for batch in batches]
    assert logged["val/loss_ce"] == pytest.approx(_sample_mean(ce, batches, "name"), rel=1e-5)
    assert {"val/loss", "val/loss_ctc"} <= set(logged)


def test_geosign_val_loss_ce_is_the_teacher_forced_cross_entropy():
    model = tiny_model()
    batches = [random_batch(b=4, seed=0, vocab=8), random_batch(b=2, seed=1, vocab=8)]
    logged = _validate(model, batches)
    model.eval()
    with torch.no_grad():
        ce = []
        for batch in batches:
            embeds, _ = model.encoder({p: batch[p] for p in PART_NAMES}, batch["frame_mask"])
            ce.append(model.lm(embeds, batch["frame_mask"], batch["target_ids"], batch["target_mask"]).loss.item())
    assert logged["val/loss_ce"] == pytest.approx(_sample_mean(ce, batches, "name"), rel=1e-5)
    assert "val/bleu4" in logged
