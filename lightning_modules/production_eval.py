"""Table 1 of PoseVQ-Diffusion (§4.1, "Evaluation Criteria"): back-translation scores of produced poses.

A frozen ``BackTranslator`` (trained on ground-truth poses) reads both the generated and the
ground-truth test poses back into glosses and text. Its gloss WER and text BLEU-1..4 / ROUGE-L
against the references give the method's row; the same scores on the ground-truth poses give the
"GT" row, the ceiling the back-translator itself sets (paper: WER 50.23, BLEU-4 10.47 on
PHOENIX-2014T). Given the Pose-VQVAE's reconstruction of the reference poses, it also scores a
"Pose-VQVAE reconstruction" row: what a generator that got every code of the test poses right
would score, the practical ceiling the tokenizer sets for its generators. DTW-MJE compares the
generated with the reference poses using Progressive Transformers' definition (L1 frame cost
over the 50 x 3 joint values, divided by the reference length; ``generation.metrics.dtw_mje``,
whose module docstring sets it beside the other definitions in use).

A generator's ``test_step`` calls ``update`` per batch, ``on_test_epoch_end`` calls ``compute``
on every rank (results are gathered with ``all_gather_object``, each sample counted once by
name) and then ``write_report``, which writes ``report.md`` and ``report.csv`` on global rank 0.

The back-translator is held *outside* the module tree: it follows ``.to(device)`` but is not in
``state_dict()`` or ``parameters()``, so a generator checkpoint neither stores it nor needs it
(``lightning test --ckpt_path best --model.back_translator_ckpt X`` loads the generator strictly),
and no optimizer ever sees its weights.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from datamodules.keypoints import PT_NUM_JOINTS
from generation.metrics import dtw_mje
from lightning_modules.back_translator import BackTranslator
from lightning_modules.checkpoint_io import load_lightning_module
from lightning_modules.metrics import gloss_wer, translation_scores

SCORE_COLUMNS = ("wer", "bleu1", "bleu2", "bleu3", "bleu4", "rougeL")
HEADERS = {"wer": "WER", "bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
           "rougeL": "ROUGE-L", "dtw_mje": "DTW-MJE", "num_samples": "samples", "steps": "steps",
           "seconds_per_sequence": "s/sequence"}
CSV_COLUMNS = ("method", *SCORE_COLUMNS, "dtw_mje", "num_samples", "steps", "seconds_per_sequence")
RECONSTRUCTION_ROW = "Pose-VQVAE reconstruction"


def _world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ProductionEvaluator(nn.Module):
    """Back-translation WER / BLEU / ROUGE-L and DTW-MJE of generated poses, plus the GT row."""

    def __init__(self, back_translator_ckpt: str, language: str = "de"):
        super().__init__()
        path = Path(back_translator_ckpt)
        if not path.is_file():
            raise FileNotFoundError(f"back_translator_ckpt {str(path)!r}: no such checkpoint file "
                                    "(train one with `lightning fit --config experiments/demo/back_translator.yaml`)")
        back_translator = load_lightning_module(BackTranslator, path, map_location="cpu")  # weights only, checksum
        back_translator.eval().requires_grad_(False)
        # plain attribute, not a registered submodule: see the module docstring
        object.__setattr__(self, "back_translator", back_translator)
        # an empty integer buffer records the module's device; integer, so .half()/.double() keep it
        self.register_buffer("_device_anchor", torch.empty(0, dtype=torch.long), persistent=False)
        self.back_translator_ckpt, self.language = str(path), language
        self._samples: dict[str, dict] = {}
        self._result: dict | None = None

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        # device only: the back-translator decodes float32 poses whatever the generator's precision
        self.back_translator.to(self._device_anchor.device)
        return self

    def reset(self) -> None:
        self._samples, self._result = {}, None

    @torch.no_grad()
    def update(self, names: list[str], generated: Tensor, generated_mask: Tensor, reference: Tensor,
               reference_mask: Tensor, gloss_refs: list[list[str]], text_refs: list[str],
               seconds_per_sequence: float, steps: int, reconstruction: Tensor | None = None) -> None:
        """Back-translate a batch of generated (B, T, 50, 3) and reference (B, T', 50, 3) poses with
        prefix masks (B, T) / (B, T'), and the tokenizer's ``reconstruction`` of the reference
        (B, T', 50, 3, on the reference's frames) if given; a sample seen again under the same name
        replaces the first."""
        batch = len(names)
        for label, poses, mask in (("generated", generated, generated_mask), ("reference", reference, reference_mask)):
            if poses.dim() != 4 or poses.shape[0] != batch or poses.shape[2:] != (PT_NUM_JOINTS, 3):
                raise ValueError(f"{label}: expected ({batch}, T, {PT_NUM_JOINTS}, 3) poses for "
                                 f"{batch} names, got {tuple(poses.shape)}")
            if mask.shape != poses.shape[:2]:
                raise ValueError(f"{label}_mask: expected shape {tuple(poses.shape[:2])}, got {tuple(mask.shape)}")
        # the reference's checks then cover it: it lives on the reference's frames and mask
        if reconstruction is not None and reconstruction.shape != reference.shape:
            raise ValueError(f"reconstruction: expected the reference's shape {tuple(reference.shape)}, "
                             f"got {tuple(reconstruction.shape)}")
        if len(gloss_refs) != batch or len(text_refs) != batch:
            raise ValueError(f"{batch} names but {len(gloss_refs)} gloss and {len(text_refs)} text references")
        if seconds_per_sequence < 0 or steps < 0:
            raise ValueError(f"seconds_per_sequence and steps must be >= 0, got {seconds_per_sequence}, {steps}")
        gen_glosses, gen_texts = self.back_translator.translate(generated, generated_mask)
        gt_glosses, gt_texts = self.back_translator.translate(reference, reference_mask)
        dtw = dtw_mje(generated.float(), reference.float(), generated_mask, reference_mask, cost="l1")  # (B,)
        for i, name in enumerate(names):
            self._samples[name] = {
                "name": name, "gloss_ref": list(gloss_refs[i]), "text_ref": text_refs[i],
                "gloss_hyp": gen_glosses[i], "text_hyp": gen_texts[i],
                "gt_gloss_hyp": gt_glosses[i], "gt_text_hyp": gt_texts[i],
                "dtw_mje": float(dtw[i]), "seconds": float(seconds_per_sequence), "steps": int(steps)}
        if reconstruction is not None:
            rec_glosses, rec_texts = self.back_translator.translate(reconstruction, reference_mask)
            rec_dtw = dtw_mje(reconstruction.float(), reference.float(), reference_mask, reference_mask, cost="l1")
            for i, name in enumerate(names):
                self._samples[name].update(rec_gloss_hyp=rec_glosses[i], rec_text_hyp=rec_texts[i],
                                           rec_dtw_mje=float(rec_dtw[i]))
        self._result = None

    def samples(self) -> list[dict]:
        """Every rank's samples, each once, sorted by name (a collective call under DDP)."""
        local = list(self._samples.values())
        _, world = _world()
        if world > 1:
            shards: list = [None] * world
            dist.all_gather_object(shards, local)
            local = [s for shard in shards for s in shard]
        return sorted({s["name"]: s for s in local}.values(), key=lambda s: s["name"])

    def _scores(self, samples: list[dict], prefix: str) -> dict[str, float]:
        gloss_refs, text_refs = [s["gloss_ref"] for s in samples], [s["text_ref"] for s in samples]
        texts = translation_scores([s[f"{prefix}text_hyp"] for s in samples], text_refs, self.language)
        return {"wer": gloss_wer([s[f"{prefix}gloss_hyp"] for s in samples], gloss_refs), **texts}

    def compute(self) -> dict[str, float]:
        """Scores (0-100 but DTW-MJE) of the generated poses, ``gt_*`` of the ground truth,
        ``rec_*`` (with ``rec_dtw_mje``) of the reconstructions when every update had them, and
        ``num_samples``, mean ``steps`` and mean ``seconds_per_sequence``. Call on every rank."""
        samples = self.samples()
        if not samples:
            raise ValueError("ProductionEvaluator.compute() called before any update()")
        n = len(samples)
        result = {**self._scores(samples, ""),
                  "dtw_mje": sum(s["dtw_mje"] for s in samples) / n,
                  **{f"gt_{k}": v for k, v in self._scores(samples, "gt_").items()},
                  "num_samples": n,
                  "steps": sum(s["steps"] for s in samples) / n,
                  "seconds_per_sequence": sum(s["seconds"] for s in samples) / n}
        with_rec = sum("rec_gloss_hyp" in s for s in samples)
        if with_rec not in (0, n):  # a ceiling over part of the test set would not be comparable
            raise ValueError(f"reconstruction given for {with_rec} of {n} samples: pass it with every update or none")
        if with_rec:
            result.update({f"rec_{k}": v for k, v in self._scores(samples, "rec_").items()},
                          rec_dtw_mje=sum(s["rec_dtw_mje"] for s in samples) / n)
        self._result = result
        return result

    def rows(self, method_name: str) -> list[dict]:
        """The Table 1 rows (method, the reconstruction when given, GT) from the last ``compute()``
        (computed now if needed)."""
        result = self._result if self._result is not None else self.compute()
        method = {"method": method_name, **{k: result[k] for k in CSV_COLUMNS[1:]}}
        no_sampling = {"num_samples": result["num_samples"], "steps": None, "seconds_per_sequence": None}
        # GT against itself: DTW-MJE is 0 by definition (Table 1)
        gt = {"method": "GT", **{k: result[f"gt_{k}"] for k in SCORE_COLUMNS}, "dtw_mje": 0.0, **no_sampling}
        if "rec_wer" not in result:
            return [method, gt]
        rec = {"method": RECONSTRUCTION_ROW, **{k: result[f"rec_{k}"] for k in SCORE_COLUMNS},
               "dtw_mje": result["rec_dtw_mje"], **no_sampling}
        return [method, rec, gt]

    def write_report(self, out_dir: str | Path, method_name: str) -> tuple[Path, Path]:
        """Write ``out_dir/report.md`` (a Table 1 style markdown table) and ``out_dir/report.csv``
        on global rank 0; returns both paths on every rank. Uses the last ``compute()``; under DDP
        call ``compute()`` on all ranks first (or call this on all ranks)."""
        out = Path(out_dir)
        md_path, csv_path = out / "report.md", out / "report.csv"
        rows = self.rows(method_name)
        rank, _ = _world()
        if rank != 0:
            return md_path, csv_path
        out.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        md_path.write_text(self._markdown(method_name, rows), encoding="utf-8")
        return md_path, csv_path

    def _markdown(self, method_name: str, rows: list[dict]) -> str:
        def cell(key: str, value) -> str:
            if value is None:
                return "–"
            if key == "dtw_mje":
                return f"{value:.3f}"  # Table 1's precision
            if key in ("num_samples", "steps"):
                return f"{value:g}"
            if key == "seconds_per_sequence":
                return f"{value:.3g}"
            return f"{value:.2f}"

        keys = CSV_COLUMNS[1:]
        lines = [f"# Back-translation evaluation: {method_name}", "",
                 f"Back-translator: `{self.back_translator_ckpt}`; text scored as language `{self.language}`.", "",
                 "| Method | " + " | ".join(HEADERS[k] for k in keys) + " |",
                 "|---|" + "---:|" * len(keys)]
        lines += ["| " + " | ".join([row["method"], *(cell(k, row[k]) for k in keys)]) + " |" for row in rows]
        lines += ["", "WER: gloss WER of the back-translator's CTC recognition; BLEU-n (cumulative) and "
                  "ROUGE-L: its text translation; all 0-100. DTW-MJE: Progressive Transformers' L1 DTW "
                  "over the 50 x 3 joint values divided by the reference length. GT: the same "
                  "back-translator on the ground-truth poses. Pose-VQVAE reconstruction: the same "
                  "on the tokenizer's decoding of the ground-truth poses' own codes, what a generator that "
                  "got every code right would score. steps and s/sequence: sampling steps and "
                  "wall-clock sampling time per sequence, averaged over the samples.", ""]
        return "\n".join(lines)
