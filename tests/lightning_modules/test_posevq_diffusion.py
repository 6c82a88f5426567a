"""PoseVQDiffusion: demo fit, samplers, length head and candidates, targets cache, predict/test outputs,
settings from YAML, checkpoints."""
from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from datamodules.formats import read_pt_split, read_skels
from datamodules.tokenization import load_gloss_vocab
from lightning_modules.checkpoint_io import load_lightning_module
from lightning_modules.cli import SignLabCLI
from lightning_modules.pose_vqvae import PoseVQVAE
from lightning_modules.posevq_diffusion import PoseVQDiffusion
from lightning_modules.production_caches import CACHE_FILE, weights_fingerprint
from lightning_modules.production_settings import DiffusionSettings, LengthSettings, NetworkSettings, OptimSettings
from tests.cli_runs import REPO

FRAMES_PER_GLOSS = 4
NUM_CODES = 16
MAX_LENGTH = 12
TINY_NETWORK = NetworkSettings(d_model=32, heads=2, encoder_depth=1, num_levels=1, blocks_per_level=1,
                               middle_blocks=1, depth=2, ff_mult=2, dropout=0.0)
TINY_DIFFUSION = DiffusionSettings(num_timesteps=10, sample_steps=4, mp_iterations=3)
TINY_LENGTH = LengthSettings(knn_k=2, knn_l=2)
TINY_OPTIM = OptimSettings(warmup_steps=2, lr=3e-3)
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


def _model(vqvae_ckpt: str, network: dict | None = None, diffusion: dict | None = None, length: dict | None = None,
           **kw) -> PoseVQDiffusion:
    """The tiny model, with fields of its settings groups and top-level arguments overridden."""
    torch.manual_seed(0)
    settings = dict(network=dataclasses.replace(TINY_NETWORK, **(network or {})),
                    diffusion=dataclasses.replace(TINY_DIFFUSION, **(diffusion or {})),
                    length=dataclasses.replace(TINY_LENGTH, **(length or {})), optim=TINY_OPTIM)
    return PoseVQDiffusion(vqvae_ckpt=vqvae_ckpt, **(dict(max_length=MAX_LENGTH, num_logged_samples=2) | settings | kw))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["diffusion", "mask_predict", "autoregressive"])
def test_short_fit_lowers_the_dev_loss_and_trains_the_length_head(vqvae_ckpt, tmp_path, method):
    model = _model(vqvae_ckpt, method=method)
    train, val = _loader(_batches(4, seed=1)), _loader(_batches(1, seed=2))
    head = model.code_generator.encoder.length_head
    head_before = head.proj.weight.detach().clone()
    vq_before = {k: v.clone() for k, v in model.vqvae.state_dict().items()}
    trainer = _trainer(tmp_path, max_steps=30, check_val_every_n_epoch=100)
    before = trainer.validate(model, val, verbose=False)[0]
    trainer.fit(model, train)
    logged = set(trainer.callback_metrics)
    after = trainer.validate(model, val, verbose=False)[0]
    assert after["val/loss"] < 0.8 * before["val/loss"], (before["val/loss"], after["val/loss"])
    assert after["val/loss_len"] < before["val/loss_len"]  # the length head learns jointly (Eq. 12)
    assert not torch.equal(head.proj.weight, head_before)
    for key, value in model.vqvae.state_dict().items():  # the tokenizer is frozen
        assert torch.equal(value, vq_before[key]), key
    for key in ("train/loss", "train/loss_code", "train/loss_len", "train/len_acc"):
        assert key in logged, key


@pytest.mark.parametrize("method", ["diffusion", "mask_predict", "autoregressive"])
def test_val_loss_is_the_training_objective_on_dev_batches_and_repeats_exactly(vqvae_ckpt, tmp_path, method):
    model = _model(vqvae_ckpt, method=method)
    batch = _batches(1, seed=11)[0]
    first = _trainer(tmp_path).validate(model, _loader([batch]), verbose=False)[0]
    assert first["val/loss"] == pytest.approx(first["val/loss_code"] + first["val/loss_len"], rel=1e-5)
    assert first["val/loss_len"] > 0 and math.isfinite(first["val/loss"])
    # the objective training optimises, on the same batch (its noise differs; its scale must not)
    model.train()
    train_loss = float(model.losses(batch)["loss"].detach())
    assert 0.25 < train_loss / first["val/loss"] < 4
    again = _trainer(tmp_path).validate(model, _loader([batch]), verbose=False)[0]
    assert again["val/loss"] == first["val/loss"]  # per-batch seed, uniform diffusion steps


@pytest.mark.parametrize("settings", [
    dict(method="diffusion", diffusion=dict(sample_steps=None)),  # full reverse diffusion, T steps
    dict(method="diffusion", diffusion=dict(sample_steps=3, top_r=0.9, guidance_scale=2.0)),  # fast, truncated, CFG
    dict(method="diffusion", network=dict(denoiser="transformer")),
    dict(method="mask_predict"),
    dict(method="autoregressive"),
], ids=["full", "fast_topr_cfg", "transformer", "mask_predict", "autoregressive"])
def test_every_sampler_returns_valid_codes_inside_a_predicted_length(vqvae_ckpt, settings):
    model = _model(vqvae_ckpt, length=dict(candidates=2), **settings)
    batch = _batches(1, seed=3)[0]
    out = model.generate(batch["gloss_ids"], batch["gloss_mask"], torch.Generator().manual_seed(0))
    codes, mask, candidates = out["codes"], out["frame_mask"], out["candidates"]
    assert candidates.shape == (4, 2) and (candidates >= 1).all() and (candidates <= MAX_LENGTH).all()
    lengths = mask.sum(1)
    assert ((lengths[:, None] == candidates).any(1)).all()  # each length is one of its candidates
    assert mask.equal(torch.arange(mask.shape[1])[None] < lengths[:, None])  # a prefix mask
    assert codes.shape == (*mask.shape, model.num_parts) and codes.dtype == torch.long
    assert (codes >= 0).all() and (codes < NUM_CODES).all() and (codes[~mask] == 0).all()
    assert out["poses"].shape == (*mask.shape, 50, 3) and (out["poses"][~mask] == 0).all()
    assert torch.isfinite(out["score"]).all() and (out["score"] <= 0).all()  # mean log-probabilities


def test_candidates_come_from_the_length_head_and_the_best_scored_one_is_kept(vqvae_ckpt, monkeypatch):
    model = _model(vqvae_ckpt, length=dict(candidates=3)).eval()
    batch = _batches(1, seed=4)[0]
    head = model.code_generator.encoder.length_head
    with torch.no_grad():  # make the head certain: every gloss lasts 2 frames, so the best total is 2·M
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.arange(MAX_LENGTH).eq(1).float() * 20)
    calls = []
    original = model.code_generator.sample

    def spy(enc, token_mask, generator=None):
        out = original(enc, token_mask, generator)
        length = token_mask.sum(1) // model.num_parts
        calls.append(length)
        # pretend the model prefers the second candidate: score = −|length − candidate 2|
        return out._replace(score=-(length - candidates[:, 1]).abs().float())

    monkeypatch.setattr(model.code_generator, "sample", spy)
    from generation.length import length_candidates

    with torch.no_grad():
        enc = model.code_generator.encode(batch["gloss_ids"], batch["gloss_mask"])
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
    assert stored["fingerprint"] == weights_fingerprint(model.vqvae) and (stored["k"], stored["l"]) == (2, 2)
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

    other_knn = _model(vqvae_ckpt, length=dict(knn_k=3))  # other (k, l): the file's entries do not count
    _trainer(tmp_path, max_steps=1).fit(other_knn, _loader(batches[:1]))
    assert torch.load(path, weights_only=True)["k"] == 3
    assert set(other_knn.targets_cache.entries) == set(batches[0]["name"])


def test_checkpoint_keeps_the_frozen_vqvae_plain_settings_and_reloads_identically(vqvae_ckpt, tmp_path):
    model = _model(vqvae_ckpt, method="mask_predict", network=dict(denoiser="transformer"),
                   length=dict(candidates=2), predict_fps=12.5)
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(model, _loader(_batches(2, seed=6)))
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimised or p.requires_grad for p in model.vqvae.parameters())
    model.train()
    assert not model.vqvae.training  # the tokenizer never leaves eval mode
    path = tmp_path / "gen.ckpt"
    trainer.save_checkpoint(path)
    hparams = torch.load(path, weights_only=True, map_location="cpu")["hyper_parameters"]
    assert hparams["network"] == dataclasses.asdict(dataclasses.replace(TINY_NETWORK, denoiser="transformer"))
    assert type(hparams["length"]) is dict and hparams["length"]["candidates"] == 2
    reloaded = load_lightning_module(PoseVQDiffusion, path, map_location="cpu")
    assert reloaded.code_generator.name == "PoseVQ-MP (Transformer)" and reloaded.length.candidates == 2
    assert reloaded.prediction_writer.fps == 12.5
    batch = _batches(1, seed=7)[0]
    a = model.generate(batch["gloss_ids"], batch["gloss_mask"], torch.Generator().manual_seed(1))
    b = reloaded.generate(batch["gloss_ids"], batch["gloss_mask"], torch.Generator().manual_seed(1))
    assert a["codes"].equal(b["codes"]) and torch.allclose(a["poses"], b["poses"])


SETTINGS_OVERLAY = """
model:
  init_args:
    network: {d_model: 16, heads: 2, encoder_depth: 1, blocks_per_level: 1, middle_blocks: 1}
    diffusion: {sample_steps: 3}
    length: {knn_k: 2, knn_l: 2}
"""


def _cli(tmp_path, monkeypatch, *args: str) -> SignLabCLI:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning"])  # pytest's own arguments are not the CLI's
    (tmp_path / "overlay.yaml").write_text(SETTINGS_OVERLAY)
    return SignLabCLI(args=["--config", str(REPO / "experiments/demo/posevq_diffusion.yaml"), "--config",
                            "overlay.yaml", "--trainer.logger", "false", *args], run=False)


def test_settings_groups_parse_from_yaml_and_merge_field_by_field_through_the_cli(vqvae_ckpt, tmp_path, monkeypatch):
    cli = _cli(tmp_path, monkeypatch, "--model.init_args.vqvae_ckpt", vqvae_ckpt,
               "--model.init_args.diffusion.top_r", "0.5")
    model = cli.model
    assert isinstance(model, PoseVQDiffusion)
    demo = yaml.safe_load((REPO / "experiments/demo/posevq_diffusion.yaml").read_text())["model"]["init_args"]
    generator = model.code_generator
    # the overlay's and the command line's fields win, the demo YAML's others stay
    assert (generator.sample_steps, generator.top_r) == (3, 0.5)
    assert generator.diffusion.num_timesteps == demo["diffusion"]["num_timesteps"]
    assert generator.encoder.d_model == 16 and model.hparams.network["num_levels"] == demo["network"]["num_levels"]
    assert model.length.candidates == demo["length"]["candidates"] and model.length.knn_k == 2
    assert model.optim.lr == demo["optim"]["lr"] and model.prediction_writer.fps == demo["predict_fps"]
    # a checkpoint of the CLI-built model reloads through Lightning's instantiator, settings and all
    trainer = Trainer(logger=False, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "cli.ckpt")
    hparams = torch.load(tmp_path / "cli.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["_instantiator"] == "lightning.pytorch.cli.instantiate_module"
    assert hparams["diffusion"]["top_r"] == 0.5 and type(hparams["diffusion"]) is dict
    reloaded = load_lightning_module(PoseVQDiffusion, tmp_path / "cli.ckpt", map_location="cpu")
    assert reloaded.code_generator.top_r == 0.5 and reloaded.code_generator.encoder.d_model == 16


def test_a_bad_settings_value_names_its_key(vqvae_ckpt, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _cli(tmp_path, monkeypatch, "--model.init_args.vqvae_ckpt", vqvae_ckpt,
             "--model.init_args.network.denoiser", "unet")
    err = capsys.readouterr().err
    assert "network.denoiser" in err and "codeunet" in err


def test_predict_writes_pt_files_readable_by_the_readers(vqvae_ckpt, tmp_path):
    model = _model(vqvae_ckpt, predict_dir=str(tmp_path / "pred"), predict_formats=["skels"])
    batches = _batches(2, seed=8, batch_size=3)
    _trainer(tmp_path).predict(model, _loader(batches))
    seqs = read_skels(tmp_path / "pred" / "predict.skels")
    assert len(seqs) == 6 and all(s.shape[1:] == (50, 3) and 1 <= len(s) <= MAX_LENGTH for s in seqs)
    samples, skipped = read_pt_split(tmp_path / "pred", "predict")
    assert not skipped
    assert [s["name"] for s in samples] == [n for b in batches for n in b["name"]]
    assert [s["gloss"] for s in samples] == [g for b in batches for g in b["gloss"]]
    assert not (tmp_path / "pred" / "pose").exists()  # only the formats asked for


def test_predict_writes_pose_files_beside_the_skels_that_pose_format_reads(vqvae_ckpt, tmp_path):
    pytest.importorskip("pose_format", reason="the `pose-format` extra is not installed")
    from pose_format import Pose

    from datamodules.pose_format_io import PT_POSE_OFFSET, PT_POSE_SCALE

    model = _model(vqvae_ckpt, predict_dir=str(tmp_path / "pred"), predict_fps=12.5)
    assert model.prediction_writer.formats == ["skels", "pose"]  # the default with pose-format installed
    batches = _batches(1, seed=12, batch_size=3)
    _trainer(tmp_path).predict(model, _loader(batches))
    seqs = read_skels(tmp_path / "pred" / "predict.skels")
    for name, seq in zip(batches[0]["name"], seqs):
        pose = Pose.read((tmp_path / "pred" / "pose" / f"{name}.pose").read_bytes())
        assert pose.body.data.shape == (len(seq), 1, 50, 3)  # T frames, one person, the 50 PT joints
        assert pose.body.fps == 12.5 and len(pose.header.components[0].points) == 50
        joints = (pose.body.data[:, 0].filled(float("nan")) - PT_POSE_OFFSET) / PT_POSE_SCALE
        assert torch.allclose(torch.as_tensor(joints, dtype=torch.float32), torch.as_tensor(seq, dtype=torch.float32),
                              atol=1e-5)  # the same poses as the .skels line


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
        return {"wer": 50.0, "bleu4": 7.5, "dtw_mje": 0.12, "gt_wer": 40.0}

    def write_report(self, out_dir, method_name):
        self.reports.append((out_dir, method_name))
        return f"{out_dir}/report.md", f"{out_dir}/report.csv"


def test_test_step_feeds_the_back_translation_evaluator(vqvae_ckpt, tmp_path):
    model = _model(vqvae_ckpt, method="mask_predict", network=dict(denoiser="transformer"),
                   report_dir=str(tmp_path / "rep"))
    model.evaluator = fake = FakeEvaluator()
    batches = _batches(2, seed=10, batch_size=2)
    metrics = _trainer(tmp_path).test(model, _loader(batches), verbose=False)[0]
    assert len(fake.updates) == 2
    first = fake.updates[0]
    assert first["names"] == batches[0]["name"] and first["gloss_refs"] == batches[0]["gloss"]
    assert first["generated"].shape[0] == 2 and first["generated"].shape[2:] == (50, 3)
    assert first["generated_mask"].shape == first["generated"].shape[:2]
    assert first["reference"].equal(batches[0]["poses"]) and first["steps"] == TINY_DIFFUSION.mp_iterations
    assert first["seconds"] > 0
    # the tokenizer's decoding of the reference's own codes, frame for frame
    codes, _ = model.vqvae.encode_latents(batches[0]["poses"], batches[0]["pose_mask"])
    expected = model.vqvae.decode(codes, batches[0]["pose_mask"])
    assert first["reconstruction"].shape == batches[0]["poses"].shape
    torch.testing.assert_close(first["reconstruction"], expected)
    assert fake.reports == [(str(tmp_path / "rep"), "PoseVQ-MP (Transformer)")]
    assert metrics["test/wer"] == 50.0 and metrics["test/bleu4"] == 7.5 and metrics["test/gt_wer"] == 40.0
    assert math.isfinite(metrics["test/loss"])


@pytest.mark.parametrize("method, steps", [("diffusion", 4), ("autoregressive", None)])
def test_reported_steps_are_the_denoising_steps_or_the_ar_token_count(vqvae_ckpt, tmp_path, method, steps):
    model = _model(vqvae_ckpt, method=method)
    model.evaluator = fake = FakeEvaluator()
    batch = _batches(1, seed=13, batch_size=2)[0]
    _trainer(tmp_path).test(model, _loader([batch]), verbose=False)
    update = fake.updates[0]
    tokens = update["generated_mask"].sum(1).float().mean() * model.num_parts  # AR: one step per token
    assert update["steps"] == (steps if steps is not None else round(float(tokens)))


def test_bad_configuration_errors_name_the_problem(vqvae_ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match="experiments/demo/pose_vqvae.yaml"):
        PoseVQDiffusion(vqvae_ckpt=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="method"):
        _model(vqvae_ckpt, method="gan")
    with pytest.raises(ValueError, match="denoiser"):
        _model(vqvae_ckpt, network=dict(denoiser="unet"))
    with pytest.raises(ValueError, match="guidance_scale"):
        _model(vqvae_ckpt, method="autoregressive", diffusion=dict(guidance_scale=2.0))
    with pytest.raises(ValueError, match="cond_drop_prob"):  # an untrained null condition cannot guide
        _model(vqvae_ckpt, diffusion=dict(guidance_scale=2.0, cond_drop_prob=0.0))
    # no CFG training, no trainable null condition (DDP rejects parameters outside the loss)
    assert not _model(vqvae_ckpt, diffusion=dict(cond_drop_prob=0.0)).code_generator.encoder.null.requires_grad
    assert _model(vqvae_ckpt, diffusion=dict(cond_drop_prob=0.1)).code_generator.encoder.null.requires_grad
    assert not _model(vqvae_ckpt, method="mask_predict",
                      diffusion=dict(cond_drop_prob=0.1)).code_generator.encoder.null.requires_grad
    with pytest.raises(ValueError, match="steps"):
        _model(vqvae_ckpt, diffusion=dict(sample_steps=50))  # more than T = 10
    with pytest.raises(ValueError, match="compile_denoiser"):
        _model(vqvae_ckpt, method="autoregressive", network=dict(compile_denoiser=True))
    with pytest.raises(ValueError, match="unknown settings \\['d_modle'\\]"):  # a checkpoint's dict, misspelt
        PoseVQDiffusion(vqvae_ckpt, network={"d_modle": 8})
    with pytest.raises(ValueError, match="predict_formats"):
        _model(vqvae_ckpt, predict_formats=["gif"])


def test_compile_denoiser_wraps_the_trunk_and_keeps_checkpoint_keys(vqvae_ckpt):
    eager, compiled = _model(vqvae_ckpt), _model(vqvae_ckpt, network=dict(compile_denoiser=True))
    assert hasattr(compiled.code_generator.denoiser.trunk, "_torchdynamo_orig_callable")  # torch.compile's wrapper
    assert not hasattr(eager.code_generator.denoiser.trunk, "_torchdynamo_orig_callable")
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints stay interchangeable
