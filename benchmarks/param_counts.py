"""Parameter counts of the paper configs: Uni-Sign (pose) and Geo-Sign pooled / token.

Plain script: ``python benchmarks/param_counts.py [--out DIR]`` (seconds, no download). Builds each
of ``experiments/{unisign_pose,geosign_pooled,geosign_token}.yaml``'s model on the meta device with
google/mt5-base's architecture (random weights: the count does not depend on them) and counts its
parameters: all, the mT5, the pose encoder with its projection, the hyperbolic branch. Where the
reference data beside the checkout lists the released checkpoints' layouts
(``../shared/data/released``: built from the released code, outside this repository), the
parameter count it states for each is recorded beside ours. Prints a table, writes ``param_counts.json``.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR, print_table, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("unisign_pose", "geosign_pooled", "geosign_token")
# google/mt5-base's config.json (the hub), as tests/test_configs.py builds it
MT5_BASE = dict(vocab_size=250112, d_model=768, d_ff=2048, d_kv=64, num_layers=12, num_decoder_layers=12,
                num_heads=12, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
RELEASED = REPO.parent / "shared" / "data" / "released"
RELEASED_FILES = {"unisign_pose": "unisign_pose_state_dict.tsv", "geosign_token": "geosign_token_state_dict.tsv"}


def count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def build(config: str):
    from lightning_modules.geosign import GeoSignTranslator

    args = yaml.safe_load((REPO / "experiments" / f"{config}.yaml").read_text())["model"]["init_args"]
    args.update(mt5_pretrained=None, mt5_config=MT5_BASE, tokenizer="synthsign-zh", init_from=None)
    with torch.device("meta"):
        return GeoSignTranslator(**args)


def released_count(config: str, folder: Path) -> int | None:
    """The parameter count the reference data states for a released layout (its README's table row
    for the file, else the file's header), if it is there."""
    name = RELEASED_FILES.get(config)
    if name is None or not (folder / name).is_file():
        return None
    readme = folder / "README.md"
    lines = [line for line in readme.read_text().splitlines() if name in line and line.startswith("|")] \
        if readme.is_file() else []
    lines += [line for line in (folder / name).read_text().splitlines() if line.startswith("#")]
    for line in lines:
        match = re.search(r"(\d{1,3}(?:,\d{3})+)(?: parameters| \(|\s*\|)", line)
        if match is not None:
            return int(match[1].replace(",", ""))
    return None


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--released", type=Path, default=RELEASED, help=f"released layouts (default {RELEASED})")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results folder (default {RESULTS_DIR})")
    args = parser.parse_args(argv)
    rows = []
    for config in CONFIGS:
        model = build(config)
        branch = sum(p.numel() for p in model.hyperbolic_parameters())
        rows.append({"config": f"experiments/{config}.yaml", "hyperbolic": model.hparams.hyperbolic,
                     "total": count(model), "without_branch": count(model) - branch, "branch": branch,
                     "mt5": count(model.lm), "pose_encoder": count(model.encoder),
                     "released_stated": released_count(config, args.released)})
    print_table("Parameters of the paper configs (mT5-base architecture, meta device)", rows,
                [("config", "config", "s"), ("total", "total", ",d"), ("branch", "branch", ",d"),
                 ("mt5", "mT5", ",d"), ("pose_encoder", "pose encoder", ",d"), ("released_stated", "released", ",d")])
    result = {"command": "python benchmarks/param_counts.py", "mt5_config": MT5_BASE, "rows": rows}
    write_results("param_counts", args.out, result)
    return result


if __name__ == "__main__":
    main()
