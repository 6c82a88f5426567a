"""Back-translator: CTC decoding on hand-made log-probs, model shapes and masking, a short fit,
validation metrics and checkpoint reload."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from datamodules.batches import collate_production
from datamodules.production import GlossPoseDataset
from lightning_modules.back_translator import BackTranslator
from translation.ctc import ctc_beam_decode, ctc_greedy_decode
from lightning_modules.metrics import gloss_wer


def log_probs_of(probs) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


# ---- CTC decoding ---------------------------------------------------------------------------

def test_greedy_collapses_repeats_and_drops_blanks():
    # best path a a _ a b b _  ->  a a b  (the blank separates the two a's)
    path = [1, 1, 0, 1, 2, 2, 0]
    lp = torch.full((7, 3), math.log(0.1))
    lp[torch.arange(7), path] = math.log(0.8)
    assert ctc_greedy_decode(lp) == [[1, 1, 2]]
    assert ctc_greedy_decode(torch.stack([lp, lp]), lengths=torch.tensor([7, 3])) == [[1, 1, 2], [1]]


def test_beam_sums_paths_that_greedy_misses():
    # P(blank) = 0.6 per frame, so the best *path* is "" (0.36), but the labelling "a" collects
    # a_, _a and aa: 0.24 + 0.24 + 0.16 = 0.64.
    lp = log_probs_of([[0.6, 0.4], [0.6, 0.4]])
    assert ctc_greedy_decode(lp) == [[]]
    assert ctc_beam_decode(lp, beam_size=3) == [[1]]


def _labelling_probs(probs: np.ndarray, blank: int = 0) -> dict[tuple, float]:
    """Exact P(labelling) by enumerating every path (tiny T and V only)."""
    totals: dict[tuple, float] = {}
    for path in itertools.product(range(probs.shape[1]), repeat=probs.shape[0]):
        collapsed = tuple(c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1]))
        totals[collapsed] = totals.get(collapsed, 0.0) + float(np.prod(probs[np.arange(len(path)), path]))
    return totals


@pytest.mark.parametrize("seed", range(5))
def test_wide_beam_finds_the_most_probable_labelling(seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3) * 0.7, size=5)  # (T=5, V=3)
    exact = _labelling_probs(probs)
    best = max(exact, key=exact.get)
    assert tuple(ctc_beam_decode(log_probs_of(probs), beam_size=243)[0]) == best


def test_decoders_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\(T, V\) or \(B, T, V\)"):
        ctc_greedy_decode(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="beam_size"):
        ctc_beam_decode(torch.zeros(3, 4), beam_size=0)
    with pytest.raises(ValueError, match="2 lengths for a batch of 1"):
        ctc_beam_decode(torch.zeros(1, 3, 4), lengths=torch.tensor([3, 3]))


# ---- the model ----------------------------------------------------------------------------

TINY = dict(d_model=32, heads=2, encoder_layers=1, decoder_layers=1, dropout=0.0, warmup_steps=1,
            max_text_len=12, beam_size=3)
FRAMES_PER_GLOSS = 6


@pytest.fixture(scope="module")
def model() -> BackTranslator:
    torch.manual_seed(0)
    return BackTranslator(**TINY)


def tiny_corpus(model: BackTranslator, n: int = 6, seed: int = 0) -> list[dict]:
    """Samples where each gloss is a fixed random pose held for a few frames (+ noise)."""
    rng = np.random.default_rng(seed)
    glosses = model.gloss_vocab.itos[3:7]  # 4 real glosses (after <pad>, <unk>, <mask>)
    words = [w for w in model.tokenizer.get_vocab() if not w.startswith("<")][:4]
    templates = {g: rng.uniform(-0.5, 0.5, size=(50, 3)) for g in glosses}
    samples = []
    for i in range(n):
        picks = [int(k) for k in rng.integers(0, 4, size=1 + i % 3)]
        poses = np.concatenate([np.repeat(templates[glosses[k]][None], FRAMES_PER_GLOSS, 0) for k in picks])
        poses = (poses + rng.normal(0, 0.01, poses.shape)).astype(np.float32)
        samples.append({"poses": poses, "gloss": [glosses[k] for k in picks],
                        "text": " ".join(words[k] for k in picks), "name": f"s{i}"})
    return samples


def batch_of(model: BackTranslator, samples: list[dict]) -> dict:
    dataset = GlossPoseDataset(samples, model.gloss_vocab)
    return collate_production([dataset[i] for i in range(len(dataset))])


def test_forward_shapes_and_finite_losses(model):
    batch = batch_of(model, tiny_corpus(model, n=3))
    b, t = batch["pose_mask"].shape
    losses = model.losses(batch)
    assert losses["gloss_log_probs"].shape == (b, (t + 1) // 2, len(model.gloss_vocab))
    assert torch.equal(losses["frame_mask"].sum(-1), (batch["pose_mask"].sum(-1) + 1) // 2)
    targets = model._text_targets(batch["text"])
    assert losses["text_logits"].shape == (*targets.shape, len(model.tokenizer))
    assert (targets[:, 0] != model.tokenizer.pad_token_id).all()
    for key in ("loss", "ctc", "ce"):
        assert torch.isfinite(losses[key]) and losses[key] > 0
    w = model.hparams
    assert losses["loss"].item() == pytest.approx(
        w.recognition_weight * losses["ctc"].item() + w.translation_weight * losses["ce"].item(), rel=1e-6)


def test_padding_does_not_change_outputs(model):
    model.eval()
    samples = tiny_corpus(model, n=3)  # lengths 6, 12, 18 frames
    batch = batch_of(model, samples)
    batch["poses"][~batch["pose_mask"]] = 7.0  # garbage in the padding must be ignored
    memory, mask = model.model.encode(batch["poses"], batch["pose_mask"])
    alone = batch_of(model, samples[:1])
    memory0, mask0 = model.model.encode(alone["poses"], alone["pose_mask"])
    n = int(mask0.sum())
    torch.testing.assert_close(memory[0, :n], memory0[0, :n], atol=1e-5, rtol=1e-5)


def test_translate_returns_one_hypothesis_per_sequence(model):
    batch = batch_of(model, tiny_corpus(model, n=4))
    model.train()
    glosses, texts = model.translate(batch["poses"], batch["pose_mask"])
    assert model.training  # translate restores the mode it found
    assert len(glosses) == len(texts) == 4
    assert all(isinstance(g, list) and all(isinstance(x, str) for x in g) for g in glosses)
    assert all(isinstance(t, str) for t in texts)
    assert all("<pad>" not in g for g in glosses)  # the blank/pad id is never emitted


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="beam_size"):
        BackTranslator(**{**TINY, "beam_size": 0})
    with pytest.raises(ValueError, match=r"poses must be \(B, T, 50, 3\)"):
        BackTranslator(**TINY).model.encode(torch.zeros(1, 4, 49, 3), torch.ones(1, 4, dtype=torch.bool))


def test_short_fit_lowers_the_loss_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = BackTranslator(**{**TINY, "lr": 3e-3})
    samples = tiny_corpus(model, n=8)
    dataset = GlossPoseDataset(samples, model.gloss_vocab)
    loader = DataLoader(dataset, batch_size=4, shuffle=False, collate_fn=collate_production)
    full = batch_of(model, samples)
    model.eval()
    with torch.no_grad():
        before = model.losses(full)["loss"].item()
    trainer = Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    model.train()
    trainer.fit(model, loader)
    model.eval()
    with torch.no_grad():
        after = model.losses(full)["loss"].item()
    assert after < 0.5 * before

    metrics = trainer.validate(model, loader, verbose=False)[0]
    assert {"val/wer", "val/bleu1", "val/bleu2", "val/bleu3", "val/bleu4", "val/rougeL", "val/loss"} <= set(metrics)
    assert all(0 <= metrics[f"val/{k}"] <= 100 for k in ("bleu1", "bleu4", "rougeL"))
    glosses, _ = model.translate(full["poses"], full["pose_mask"])
    assert metrics["val/wer"] == pytest.approx(gloss_wer(glosses, full["gloss"]), abs=1e-4)

    path = tmp_path / "bt.ckpt"
    trainer.save_checkpoint(path)
    reloaded = BackTranslator.load_from_checkpoint(path)
    assert reloaded.hparams.d_model == TINY["d_model"]
    assert reloaded.translate(full["poses"], full["pose_mask"]) == model.translate(full["poses"], full["pose_mask"])
