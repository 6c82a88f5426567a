"""signlab's translation metrics on Uni-Sign's released pose-only predictions, against its published scores.

Plain script: ``python benchmarks/metric_reproduction.py [--data DIR] [--out DIR]``. Reads
``<DIR>/eval_<set>_pose_only/<split>_tmp_{pres,refs}.txt`` (default ``../shared/data/unisign_predictions``
beside the repository), scores each pair with ``lightning_modules.metrics.translation_scores`` in
the set's language and compares with the scores Uni-Sign reports for those predictions. Prints a
table, writes ``metric_reproduction.json``. A set whose files are absent is listed as missing, not
scored: the released predictions are reference data a user's machine need not have.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, print_table, write_results  # noqa: E402
from lightning_modules.metrics import read_unisign_predictions, translation_scores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "unisign_predictions"
# (folder, split, language, published BLEU-1, BLEU-4, ROUGE-L): Uni-Sign's pose-only rows
PUBLISHED = (
    ("eval_csl_daily_pose_only", "dev", "Chinese", 53.30, 25.27, 54.30),
    ("eval_csl_daily_pose_only", "test", "Chinese", 53.87, 25.70, 55.00),
    ("eval_how2sign_pose_only", "test", "English", 39.38, 14.50, 34.51),
    ("eval_openasl_pose_only", "dev", "English", 49.71, 22.38, 42.81),
    ("eval_openasl_pose_only", "test", "English", 49.09, 22.64, 42.83),
)
TOLERANCE = 0.01  # the published scores have two decimals


def score(directory: Path, split: str, language: str) -> dict[str, float]:
    hyps = read_unisign_predictions(directory / f"{split}_tmp_pres.txt")
    refs = read_unisign_predictions(directory / f"{split}_tmp_refs.txt")
    if hyps.keys() != refs.keys():
        raise ValueError(f"{directory}/{split}: predictions and references name different samples")
    names = list(hyps)
    return {"samples": len(names), **translation_scores([hyps[n] for n in names], [refs[n] for n in names], language)}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"released predictions (default {DEFAULT_DATA})")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results folder (default {RESULTS_DIR})")
    args = parser.parse_args(argv)
    rows, missing = [], []
    for folder, split, language, bleu1, bleu4, rouge_l in PUBLISHED:
        directory = args.data / folder
        if not (directory / f"{split}_tmp_pres.txt").is_file():
            missing.append(f"{folder}/{split}")
            continue
        ours = score(directory, split, language)
        published = {"bleu1": bleu1, "bleu4": bleu4, "rougeL": rouge_l}
        rows.append({"set": f"{folder.removeprefix('eval_').removesuffix('_pose_only')} {split}", "language": language,
                     "samples": ours["samples"], **{k: ours[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL")},
                     **{f"published_{k}": v for k, v in published.items()},
                     "max_abs_diff": max(abs(ours[k] - v) for k, v in published.items())})
    for row in rows:
        row["reproduced"] = row["max_abs_diff"] <= TOLERANCE
    print_table(f"Uni-Sign's released pose-only predictions scored by signlab ({args.data})", rows,
                [("set", "set", "s"), ("samples", "samples", "d"), ("bleu1", "BLEU-1", ".2f"), ("bleu4", "BLEU-4", ".2f"),
                 ("rougeL", "ROUGE-L", ".2f"), ("published_bleu1", "pub. B-1", ".2f"),
                 ("published_bleu4", "pub. B-4", ".2f"), ("published_rougeL", "pub. R-L", ".2f"),
                 ("reproduced", "within 0.01", "")])
    if missing:
        print("missing (not scored): " + ", ".join(missing))
    result = {"command": "python benchmarks/metric_reproduction.py", "data": str(args.data),
              "tolerance": TOLERANCE, "rows": rows, "missing": missing}
    write_results("metric_reproduction", args.out, result)
    return result


if __name__ == "__main__":
    main()
