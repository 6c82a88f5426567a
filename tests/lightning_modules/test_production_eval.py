"""ProductionEvaluator: loading the back-translator, GT-as-generated, DTW vs a reference DP,
report files, DDP gathering (monkeypatched collective), and staying out of checkpoints."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader

from datamodules.batches import collate_production
from datamodules.production import GlossPoseDataset
from lightning_modules import production_eval
from lightning_modules.back_translator import BackTranslator
from lightning_modules.metrics import gloss_wer, translation_scores
from lightning_modules.production_eval import CSV_COLUMNS, RECONSTRUCTION_ROW, ProductionEvaluator

TINY = dict(d_model=32, heads=2, encoder_layers=1, decoder_layers=1, dropout=0.0, warmup_steps=1,
            max_text_len=12, beam_size=2, lr=3e-3)


def corpus(bt: BackTranslator, n: int, seed: int = 0) -> list[dict]:
    """Samples whose glosses are fixed random poses held for 6 frames each (+ noise)."""
    rng = np.random.default_rng(seed)
    glosses = bt.gloss_vocab.itos[3:6]
    words = [w for w in bt.tokenizer.get_vocab() if not w.startswith("<")][:3]
    templates = {g: rng.uniform(-0.5, 0.5, size=(50, 3)) for g in glosses}
    samples = []
    for i in range(n):
        picks = [int(k) for k in rng.integers(0, 3, size=1 + i % 3)]
        poses = np.concatenate([np.repeat(templates[glosses[k]][None], 6, 0) for k in picks])
        samples.append({"poses": (poses + rng.normal(0, 0.01, poses.shape)).astype(np.float32),
                        "gloss": [glosses[k] for k in picks], "text": " ".join(words[k] for k in picks),
                        "name": f"s{i:02d}"})
    return samples


def batch_of(bt: BackTranslator, samples: list[dict]) -> dict:
    dataset = GlossPoseDataset(samples, bt.gloss_vocab)
    return collate_production([dataset[i] for i in range(len(dataset))])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A tiny back-translator trained for a few steps, saved as the CLI would save it."""
    torch.manual_seed(0)
    bt = BackTranslator(**TINY)
    dataset = GlossPoseDataset(corpus(bt, 12), bt.gloss_vocab)
    trainer = Trainer(max_steps=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(bt, DataLoader(dataset, batch_size=6, collate_fn=collate_production))
    path = tmp_path_factory.mktemp("bt") / "bt.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def evaluator(ckpt) -> ProductionEvaluator:
    return ProductionEvaluator(ckpt, language="de")


@pytest.fixture(scope="module")
def batches(evaluator) -> list[dict]:
    samples = corpus(evaluator.back_translator, 6, seed=1)
    return [batch_of(evaluator.back_translator, samples[:4]), batch_of(evaluator.back_translator, samples[4:])]


def feed(ev: ProductionEvaluator, batch: dict, generated=None, generated_mask=None,
         seconds: float = 0.5, steps: int = 100, reconstruction=None) -> None:
    ev.update(batch["name"], batch["poses"] if generated is None else generated,
              batch["pose_mask"] if generated_mask is None else generated_mask,
              batch["poses"], batch["pose_mask"], batch["gloss"], batch["text"], seconds, steps,
              reconstruction=reconstruction)


def dtw_l1_reference(hyp: np.ndarray, ref: np.ndarray) -> float:
    """PT's calculate_dtw: L1 frame cost, steps (1,0), (0,1), (1,1), divided by the reference length."""
    n, m = len(hyp), len(ref)
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = np.abs(hyp[i - 1] - ref[j - 1]).sum() + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return acc[n, m] / m


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        ProductionEvaluator(str(tmp_path / "nowhere.ckpt"))


def test_loaded_back_translator_is_frozen_and_outside_the_module_tree(evaluator, ckpt):
    bt = evaluator.back_translator
    assert isinstance(bt, BackTranslator) and not bt.training
    assert not any(p.requires_grad for p in bt.parameters())
    reference = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(v, reference[k]) for k, v in bt.state_dict().items())

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(2, 2)
            self.evaluator = evaluator

    generator = Generator().train()
    # the generator's checkpoint and optimizer see only its own weights
    assert set(generator.state_dict()) == {"net.weight", "net.bias"}
    assert len(list(generator.parameters())) == 2
    assert not bt.training  # .train() on the generator leaves the evaluator's model in eval mode


def test_device_moves_reach_the_back_translator_but_dtype_casts_do_not(ckpt):
    evaluator = ProductionEvaluator(ckpt)  # its own copy: a move to meta cannot be undone
    bt = evaluator.back_translator
    nn.ModuleDict({"evaluator": evaluator}).double()  # it decodes float32 poses whatever the generator's dtype
    assert all(p.dtype == torch.float32 for p in bt.parameters())
    nn.ModuleDict({"evaluator": evaluator}).to("meta")  # a device move (meta: no memory, no GPU needed)
    assert all(p.device.type == "meta" for p in bt.parameters())


def test_ground_truth_as_generated_matches_the_gt_row(evaluator, batches):
    evaluator.reset()
    for batch in batches:
        feed(evaluator, batch)
    scores = evaluator.compute()
    assert scores["dtw_mje"] == 0.0
    for key in ("wer", "bleu1", "bleu2", "bleu3", "bleu4", "rougeL"):
        assert scores[key] == scores[f"gt_{key}"]
    assert scores["num_samples"] == 6 and scores["steps"] == 100 and scores["seconds_per_sequence"] == 0.5


def test_scores_match_independent_back_translation_and_dtw(evaluator, batches):
    """Generated = noisy, time-stretched poses: scores equal translate() + the metric functions,
    DTW-MJE equals a plain O(NM) DP of PT's definition."""
    evaluator.reset()
    batch = batches[0]
    gen = batch["poses"].repeat_interleave(2, dim=1)[:, :-3]  # (B, 2T-3, 50, 3)
    gen = gen + 0.05 * torch.randn(gen.shape, generator=torch.Generator().manual_seed(0))
    gen_len = 2 * batch["pose_mask"].sum(-1) - 3
    gen_mask = torch.arange(gen.shape[1])[None] < gen_len[:, None]
    feed(evaluator, batch, gen, gen_mask, seconds=0.25, steps=10)
    feed(evaluator, batches[1], seconds=0.75, steps=20)  # GT as generated
    scores = evaluator.compute()

    bt = evaluator.back_translator
    g_gloss, g_text = bt.translate(gen, gen_mask)
    b_gloss, b_text = bt.translate(batches[1]["poses"], batches[1]["pose_mask"])
    gt_gloss, gt_text = bt.translate(batch["poses"], batch["pose_mask"])
    gloss_refs, text_refs = batch["gloss"] + batches[1]["gloss"], batch["text"] + batches[1]["text"]
    assert scores["wer"] == pytest.approx(gloss_wer(g_gloss + b_gloss, gloss_refs))
    assert scores["gt_wer"] == pytest.approx(gloss_wer(gt_gloss + b_gloss, gloss_refs))
    text = translation_scores(g_text + b_text, text_refs, "de")
    assert all(scores[k] == pytest.approx(v) for k, v in text.items())

    dtws = [dtw_l1_reference(gen[i, :gen_len[i]].numpy().astype(np.float64),
                             batch["poses"][i, :batch["pose_mask"][i].sum()].numpy().astype(np.float64))
            for i in range(len(gen))]
    assert scores["dtw_mje"] == pytest.approx(sum(dtws) / 6, rel=1e-5)  # batch 2 adds zeros
    assert scores["steps"] == pytest.approx((4 * 10 + 2 * 20) / 6)
    assert scores["seconds_per_sequence"] == pytest.approx((4 * 0.25 + 2 * 0.75) / 6)


def test_reconstruction_row_scores_the_tokenizer_ceiling(evaluator, batches, tmp_path):
    """A reconstruction (here: the reference plus noise) gets its own scores and report row, between
    the method and GT; DTW-MJE against the reference uses the reference's frames."""
    evaluator.reset()
    noise = torch.Generator().manual_seed(1)
    recs = [b["poses"] + 0.2 * torch.randn(b["poses"].shape, generator=noise) for b in batches]
    for batch, rec in zip(batches, recs):
        feed(evaluator, batch, reconstruction=rec)
    scores = evaluator.compute()

    bt = evaluator.back_translator
    hyps = [bt.translate(rec, b["pose_mask"]) for b, rec in zip(batches, recs)]
    gloss_refs = batches[0]["gloss"] + batches[1]["gloss"]
    assert scores["rec_wer"] == pytest.approx(gloss_wer(hyps[0][0] + hyps[1][0], gloss_refs))
    text = translation_scores(hyps[0][1] + hyps[1][1], batches[0]["text"] + batches[1]["text"], "de")
    assert all(scores[f"rec_{k}"] == pytest.approx(v) for k, v in text.items())
    dtws = [dtw_l1_reference(rec[i, :n].numpy().astype(np.float64), b["poses"][i, :n].numpy().astype(np.float64))
            for b, rec in zip(batches, recs) for i, n in enumerate(b["pose_mask"].sum(1).tolist())]
    assert scores["rec_dtw_mje"] == pytest.approx(sum(dtws) / 6, rel=1e-5) and scores["rec_dtw_mje"] > 0
    assert scores["wer"] == scores["gt_wer"]  # the generated poses were the reference: untouched

    _, csv_path = evaluator.write_report(tmp_path, "PoseVQ-AR (KV cache)")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["PoseVQ-AR (KV cache)", RECONSTRUCTION_ROW, "GT"]
    assert float(rows[1]["wer"]) == pytest.approx(scores["rec_wer"])
    assert float(rows[1]["dtw_mje"]) == pytest.approx(scores["rec_dtw_mje"]) and rows[1]["steps"] == ""
    assert f"| {RECONSTRUCTION_ROW} | {scores['rec_wer']:.2f} |" in (tmp_path / "report.md").read_text()


def test_reconstruction_must_cover_every_sample_and_match_the_reference(evaluator, batches):
    evaluator.reset()
    with pytest.raises(ValueError, match=r"reconstruction: expected the reference's shape \(4, "):
        feed(evaluator, batches[0], reconstruction=batches[0]["poses"][:, :-1])
    feed(evaluator, batches[0], reconstruction=batches[0]["poses"])
    feed(evaluator, batches[1])
    with pytest.raises(ValueError, match="reconstruction given for 4 of 6 samples"):
        evaluator.compute()


def test_a_sample_seen_twice_counts_once(evaluator, batches):
    evaluator.reset()
    feed(evaluator, batches[0])
    feed(evaluator, batches[0])
    assert evaluator.compute()["num_samples"] == 4


def test_bad_input_is_refused(evaluator, batches):
    batch = batches[0]
    evaluator.reset()
    with pytest.raises(ValueError, match=r"generated: expected \(4, T, 50, 3\)"):
        feed(evaluator, batch, batch["poses"][..., :2])
    with pytest.raises(ValueError, match="generated_mask"):
        feed(evaluator, batch, generated_mask=batch["pose_mask"][:, :-1])
    with pytest.raises(ValueError, match="before any update"):
        evaluator.compute()


def test_report_files(evaluator, batches, tmp_path):
    evaluator.reset()
    for batch in batches:
        feed(evaluator, batch, seconds=0.125, steps=100)
    scores = evaluator.compute()
    md_path, csv_path = evaluator.write_report(tmp_path / "eval", "PoseVQ-Diffusion")
    assert (md_path, csv_path) == (tmp_path / "eval" / "report.md", tmp_path / "eval" / "report.csv")

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["method"] for r in rows] == ["PoseVQ-Diffusion", "GT"]
    method, gt = rows
    assert float(method["bleu4"]) == pytest.approx(scores["bleu4"])
    assert float(gt["wer"]) == pytest.approx(scores["gt_wer"])
    assert float(gt["dtw_mje"]) == 0.0 and gt["steps"] == "" and gt["seconds_per_sequence"] == ""
    assert int(method["num_samples"]) == int(gt["num_samples"]) == 6 and float(method["steps"]) == 100

    lines = md_path.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Method", "WER", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "DTW-MJE", "samples", "steps",
        "s/sequence"]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines
             if line.startswith("| PoseVQ-Diffusion") or line.startswith("| GT")]
    assert table[0][1] == f"{scores['wer']:.2f}" and table[0][7] == f"{scores['dtw_mje']:.3f}"
    assert table[0][8:] == ["6", "100", "0.125"]
    assert table[1][5] == f"{scores['gt_bleu4']:.2f}" and table[1][7] == "0.000" and table[1][9:] == ["–", "–"]


def test_ddp_gather_counts_each_sample_once(evaluator, batches, monkeypatch, tmp_path):
    """Rank 0 holds batch 0, rank 1 holds batch 1 plus a duplicate of batch 0's first sample
    (what a padding sampler does): the gathered scores equal one process seeing everything."""
    evaluator.reset()
    for batch in batches:
        feed(evaluator, batch)
    single = evaluator.compute()

    evaluator.reset()
    feed(evaluator, batches[1])
    first = {k: v[:1] for k, v in batches[0].items() if k not in ("gloss_ids", "gloss_mask")}
    feed(evaluator, first)
    rank1 = list(evaluator._samples.values())
    evaluator.reset()
    feed(evaluator, batches[0])

    def all_gather_object(out, obj):
        out[0], out[1] = obj, rank1

    dist = production_eval.dist
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    assert evaluator.compute() == single
    # only global rank 0 writes the files
    md_path, csv_path = evaluator.write_report(tmp_path, "PoseVQ-MP")
    assert not md_path.exists() and not csv_path.exists()
