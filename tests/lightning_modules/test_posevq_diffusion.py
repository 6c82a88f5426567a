"""PoseVQDiffusion: demo fit, samplers, length head and candidates, targets cache, predict/test outputs."""
from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from datamodules.formats import read_pt_split, read_skels
from datamodules.tokenization import load_gloss_vocab
from lightning_modules.pose_vqvae import PoseVQVAE
from lightning_modules.posevq_diffusion import CACHE_FILE, PoseVQDiffusion

FRAMES_PER_GLOSS = 4
NUM_CODES = 16
TINY = dict(d_model=32, heads=2, encoder_depth=1, num_levels=1, blocks_per_level=1, middle_blocks=1, depth=2,
            ff_mult=2, dropout=0.0, max_length=12, num_timesteps=10, sample_steps=4, mp_iterations=3,
            warmup_steps=2, lr=3e-3, knn_k=2, knn_l=2, num_logged_samples=2)
VOCAB = load_gloss_vocab("synthsign")


def _batches(num_batches: int, seed: int, batch_size: int = 4) -> list[dict]:
    """Production batches where each gloss is its own 4-frame pose pattern (learnable from glosses)."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.Generator().manual_seed(0)
    glosses = VOCAB.itos[3:9]  # six real glosses
    shapes = {gl: 0.3 * torch.randn(FRAMES_PER_GLOSS, 50, 3, generator=pattern) for gl in glosses}
    batches = []
    for b in range(num_batches):
        counts = torch.randint(1, 4, (batch_size,), generator=g)
        seqs = [[glosses[i] for i in torch.randint(0, len(glosses), (int(n),), generator=g)] for n in counts]
        t_max, g_max = int(counts.max()) * FRAMES_PER_GLOSS, int(counts.max())
        poses = torch.zeros(batch_size, t_max, 50, 3)
        ids = torch.zeros(batch_size, g_max, dtype=torch.long)
        for i, seq in enumerate(seqs):
            poses[i, : len(seq) * FRAMES_PER_GLOSS] = torch.cat([shapes[gl] for gl in seq])
            ids[i, : len(seq)] = torch.tensor(VOCAB.encode(seq))
        batches.append({"poses": poses, "pose_mask": torch.arange(t_max)[None] < counts[:, None] * FRAMES_PER_GLOSS,
                        "gloss_ids": ids, "gloss_mask": ids != 0, "gloss": seqs,
                        "text": [" ".join(s).lower() for s in seqs], "name": [f"s{seed}_{b}_{i}" for i in range(batch_size)]})
    return batches


def _loader(batches: list[dict]) -> DataLoader:
    return DataLoader(batches, batch_size=None)  # items are ready-made batch dicts


def _trainer(tmp_path, **kw) -> Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    return Trainer(**(defaults | kw))


@pytest.fixture(scope="module")
def vqvae_ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("vqvae")
    model = PoseVQVAE(hidden=16, layers=1, heads=2, codebook_size=NUM_CODES, spl_hidden=8, warmup_steps=1)
    trainer = _trainer(root, max_steps=3)
    trainer.fit(model, _loader(_batches(3, seed=9)))
    path = root / "vqvae.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def _model(vqvae_ckpt: str, **kw) -> PoseVQDiffusion:
    torch.manual_seed(0)
    return PoseVQDiffusion(vqvae_ckpt=vqvae_ckpt, **(TINY | kw))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["diffusion", "mask_predict", "autoregressive"])
def test_short_fit_lowers_the_dev_loss_and_trains_the_length_head(vqvae_ckpt, tmp_path, method):
    model = _model(vqvae_ckpt, method=method)
    train, val = _loader(_batches(4, seed=1)), _loader(_batches(1, seed=2))
    head_before = model.encoder.length_head.proj.weight.detach().clone()
    vq_before = {k: v.clone() for k, v in model.vqvae.state_dict().items()}
    trainer = _trainer(tmp_path, max_steps=30, check_val_every_n_epoch=100)
    before = trainer.validate(model, val, verbose=False)[0]
    trainer.fit(model, train)
    logged = set(trainer.callback_metrics)
    after = trainer.validate(model, val, verbose=False)[0]
    assert after["val/loss"] < 0.8 * before["val/loss"], (before["val/loss"], after["val/loss"])
    assert after["val/loss_len"] < before["val/loss_len"]  # the length head learns jointly (Eq. 12)
    assert not torch.equal(model.encoder.length_head.proj.weight, head_before)
    for key, value in model.vqvae.state_dict().items():  # the tokenizer is frozen
        assert torch.equal(value, vq_before[key]), key
    for key in ("train/loss", "train/loss_code", "train/loss_len", "train/len_acc"):
        assert key in logged, key


@pytest.mark.parametrize("settings", [
    dict(method="diffusion", sample_steps=None),  # full reverse diffusion, T steps
    dict(method="diffusion", sample_steps=3, top_r=0.9, guidance_scale=2.0),  # fast, truncated, CFG
    dict(method="diffusion", denoiser="transformer"),
    dict(method="mask_predict"),
    dict(method="autoregressive"),
], ids=["full", "fast_topr_cfg", "transformer", "mask_predict", "autoregressive"])
def test_every_sampler_returns_valid_codes_inside_a_predicted_length(vqvae_ckpt, settings):
    model = _model(vqvae_ckpt, length_candidates=2, **settings)
    batch = _batches(1, seed=3)[0]
    out = model.generate(batch["gloss_ids"], batch["gloss_mask"], torch.Generator().manual_seed(0))
    codes, mask, candidates = out["codes"], out["frame_mask"], out["candidates"]
    assert candidates.shape == (4, 2) and (candidates >= 1).all() and (candidates <= TINY["max_length"]).all()
    lengths = mask.sum(1)
    assert ((lengths[:, None] == candidates).any(1)).all()  # each length is one of its candidates
    assert mask.equal(torch.arange(mask.shape[1])[None] < lengths[:, None])  # a prefix mask
    assert codes.shape == (*mask.shape, model.num_parts) and codes.dtype == torch.long
    assert (codes >= 0).all() and (codes < NUM_CODES).all() and (codes[~mask] == 0).all()
    assert out["poses"].shape == (*mask.shape, 50, 3) and (out["poses"][~mask] == 0).all()
    assert torch.isfinite(out["score"]).all() and (out["score"] <= 0).all()  # mean log-probabilities


def test_candidates_come_from_the_length_head_and_the_best_scored_one_is_kept(vqvae_ckpt, monkeypatch):
    model = _model(vqvae_ckpt, length_candidates=3).eval()
    batch = _batches(1, seed=4)[0]
    with torch.no_grad():  # make the head certain: every gloss lasts 2 frames, so the best total is 2·M
        model.encoder.length_head.proj.weight.zero_()
        model.encoder.length_head.proj.bias.copy_(torch.arange(TINY["max_length"]).eq(1).float() * 20)
    calls = []
    original = model.diffusion.sample

    def spy(denoiser, cond, token_mask, *args, **kwargs):
        out = original(denoiser, cond, token_mask, *args, **kwargs)
        length = token_mask.sum(1) // model.num_parts
        calls.append(length)
        # pretend the model prefers the second candidate: score = −|length − candidate 2|
        return out._replace(score=-(length - candidates[:, 1]).abs().float())

    monkeypatch.setattr(model.diffusion, "sample", spy)
    from generation.length import length_candidates

    with torch.no_grad():
        enc = model.encoder(batch["gloss_ids"], batch["gloss_mask"])
        candidates = length_candidates(enc.length_logits, batch["gloss_mask"], 3)
    num_glosses = batch["gloss_mask"].sum(1)
    assert candidates[:, 0].equal(2 * num_glosses)
    out = model.generate(batch["gloss_ids"], batch["gloss_mask"])
    assert len(calls) == 3  # one decoding per candidate (Table 2b)
    assert out["candidates"].equal(candidates)
    assert out["frame_mask"].sum(1).equal(candidates[:, 1])


def test_targets_are_sequential_knn_labels_cached_in_the_run_folder(vqvae_ckpt, tmp_path, monkeypatch):
    model = _model(vqvae_ckpt)
    batches = _batches(2, seed=5)
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(model, _loader(batches))
    path = tmp_path / "cache" / CACHE_FILE
    assert path.is_file()
    stored = torch.load(path, weights_only=True)
    assert stored["fingerprint"] == model.vqvae_fingerprint() and (stored["k"], stored["l"]) == (2, 2)
    for batch in batches:
        for i, name in enumerate(batch["name"]):
            codes, lengths = stored["targets"][name]
            assert len(codes) == int(batch["pose_mask"][i].sum()) and codes.shape[1] == model.num_parts
            assert len(lengths) == int(batch["gloss_mask"][i].sum())
            assert int(lengths.sum()) == len(codes)  # sequential-KNN splits the whole sequence
            expected = model.vqvae.encode(batch["poses"][i : i + 1], batch["pose_mask"][i : i + 1])[0]
            assert codes.equal(expected[: len(codes)])

    fresh = _model(vqvae_ckpt)  # a second run reads the cache instead of encoding
    encoded = []
    monkeypatch.setattr(fresh.vqvae, "encode_latents", lambda *a: encoded.append(a) or (_ for _ in ()).throw(
        AssertionError("encoded a cached sample")))
    _trainer(tmp_path, max_steps=1).fit(fresh, _loader(batches[:1]))
    assert not encoded


def test_checkpoint_keeps_the_frozen_vqvae_and_reloads_identically(vqvae_ckpt, tmp_path):
    model = _model(vqvae_ckpt)
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(model, _loader(_batches(2, seed=6)))
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimised or p.requires_grad for p in model.vqvae.parameters())
    model.train()
    assert not model.vqvae.training  # the tokenizer never leaves eval mode
    path = tmp_path / "gen.ckpt"
    trainer.save_checkpoint(path)
    reloaded = PoseVQDiffusion.load_from_checkpoint(path, map_location="cpu")
    batch = _batches(1, seed=7)[0]
    a = model.generate(batch["gloss_ids"], batch["gloss_mask"], torch.Generator().manual_seed(1))
    b = reloaded.generate(batch["gloss_ids"], batch["gloss_mask"], torch.Generator().manual_seed(1))
    assert a["codes"].equal(b["codes"]) and torch.allclose(a["poses"], b["poses"])


def test_predict_writes_pt_files_readable_by_the_readers(vqvae_ckpt, tmp_path):
    model = _model(vqvae_ckpt, predict_dir=str(tmp_path / "pred"))
    batches = _batches(2, seed=8, batch_size=3)
    _trainer(tmp_path).predict(model, _loader(batches))
    seqs = read_skels(tmp_path / "pred" / "predict.skels")
    assert len(seqs) == 6 and all(s.shape[1:] == (50, 3) and 1 <= len(s) <= TINY["max_length"] for s in seqs)
    samples, skipped = read_pt_split(tmp_path / "pred", "predict")
    assert not skipped
    assert [s["name"] for s in samples] == [n for b in batches for n in b["name"]]
    assert [s["gloss"] for s in samples] == [g for b in batches for g in b["gloss"]]


class FakeEvaluator:
    """ProductionEvaluator's interface, recording what it is given."""

    def __init__(self):
        self.updates, self.reports = [], []

    def update(self, names, generated, generated_mask, reference, reference_mask, gloss_refs, text_refs,
               seconds_per_sequence, steps, reconstruction=None):
        self.updates.append(dict(names=names, generated=generated, generated_mask=generated_mask,
                                 reference=reference, reference_mask=reference_mask, gloss_refs=gloss_refs,
                                 text_refs=text_refs, seconds=seconds_per_sequence, steps=steps,
                                 reconstruction=reconstruction))

    def compute(self):
        return {"wer": 50.0, "bleu4": 7.5, "dtw_mje": 0.12, "gt": {"wer": 40.0}}

    def write_report(self, out_dir, method_name):
        self.reports.append((out_dir, method_name))
        return f"{out_dir}/report.md", f"{out_dir}/report.csv"


def test_test_step_feeds_the_back_translation_evaluator(vqvae_ckpt, tmp_path):
    model = _model(vqvae_ckpt, method="mask_predict", denoiser="transformer", report_dir=str(tmp_path / "rep"))
    model.evaluator = fake = FakeEvaluator()
    batches = _batches(2, seed=10, batch_size=2)
    metrics = _trainer(tmp_path).test(model, _loader(batches), verbose=False)[0]
    assert len(fake.updates) == 2
    first = fake.updates[0]
    assert first["names"] == batches[0]["name"] and first["gloss_refs"] == batches[0]["gloss"]
    assert first["generated"].shape[0] == 2 and first["generated"].shape[2:] == (50, 3)
    assert first["generated_mask"].shape == first["generated"].shape[:2]
    assert first["reference"].equal(batches[0]["poses"]) and first["steps"] == TINY["mp_iterations"]
    assert first["seconds"] > 0
    # the tokenizer's decoding of the reference's own codes, frame for frame
    codes, _ = model.vqvae.encode_latents(batches[0]["poses"], batches[0]["pose_mask"])
    expected = model.vqvae.decode(codes, batches[0]["pose_mask"])
    assert first["reconstruction"].shape == batches[0]["poses"].shape
    torch.testing.assert_close(first["reconstruction"], expected)
    assert fake.reports == [(str(tmp_path / "rep"), "PoseVQ-MP (Transformer)")]
    assert metrics["test/wer"] == 50.0 and metrics["test/bleu4"] == 7.5 and metrics["test/gt_wer"] == 40.0
    assert math.isfinite(metrics["test/loss"])


def test_bad_configuration_errors_name_the_problem(vqvae_ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match="experiments/demo/pose_vqvae.yaml"):
        PoseVQDiffusion(vqvae_ckpt=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="method"):
        _model(vqvae_ckpt, method="gan")
    with pytest.raises(ValueError, match="guidance_scale"):
        _model(vqvae_ckpt, method="autoregressive", guidance_scale=2.0)
    with pytest.raises(ValueError, match="cond_drop_prob"):  # an untrained null condition cannot guide
        _model(vqvae_ckpt, guidance_scale=2.0, cond_drop_prob=0.0)
    # no CFG training, no trainable null condition (DDP rejects parameters outside the loss)
    assert not _model(vqvae_ckpt, cond_drop_prob=0.0).encoder.null.requires_grad
    assert _model(vqvae_ckpt, cond_drop_prob=0.1).encoder.null.requires_grad
    with pytest.raises(ValueError, match="steps"):
        _model(vqvae_ckpt, sample_steps=50)  # more than T = 10
    with pytest.raises(ValueError, match="compile_denoiser"):
        _model(vqvae_ckpt, method="autoregressive", compile_denoiser=True)


def test_compile_denoiser_wraps_the_trunk_and_keeps_checkpoint_keys(vqvae_ckpt):
    eager, compiled = _model(vqvae_ckpt), _model(vqvae_ckpt, compile_denoiser=True)
    assert hasattr(compiled.denoiser.trunk, "_torchdynamo_orig_callable")  # torch.compile's wrapper
    assert not hasattr(eager.denoiser.trunk, "_torchdynamo_orig_callable")
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints stay interchangeable
