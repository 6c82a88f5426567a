"""`lightning validate_data --config CONFIG [overrides]`: what the config's dataset folder holds.

Per split: the samples in the label file (CSL-News: in its JSON, split as training splits it),
malformed label entries, pose files present and missing, and pose files that do not read. Labels are parsed and pose paths checked for
existence, which takes seconds for CSL-Daily-sized label files (20k samples); pose contents are
not read unless ``--read_poses`` (every present file through the readers training uses), except
that a fresh packed cache already records them (``datamodules/packed.py``). A PT (production)
folder: its four files per split, their line counts, and with ``--read_poses`` every line parsed.

The first names of each problem are printed; ``--list FILE`` writes every one
(``split, name, problem, message`` rows). Exit code 0 when every split of the config is complete
and readable, 1 otherwise. The config is resolved as ``lightning fit`` resolves it
(``data_config``), so command-line overrides work: ``--data.init_args.pose_dir DIR``.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import time
from collections import defaultdict
from pathlib import Path

from datamodules.batches import SPLITS
from datamodules.csl_news import CSLNewsDataModule, read_csl_news_labels
from datamodules.formats import (PT_SUFFIXES, pt_split_paths, read_poses, read_pt_split, read_unisign_labels,
                                 unisign_labels)
from datamodules.packed import error_reason, fingerprint, read_index
from datamodules.production import GlossToPoseDataModule
from datamodules.translation import SignTranslationDataModule, label_path
from lightning_modules.config_errors import ConfigError
from lightning_modules.data_config import datamodule_from_config

SHOWN = 5  # names printed per problem and split

Problem = tuple[str, str, str, str]  # split, sample name, problem, message


def _translation_split(dm: SignTranslationDataModule, split: str, read_poses_: bool) -> tuple[dict, list[Problem]]:
    """One split's counts and problems."""
    labels_file = label_path(dm.label_dir, split)
    # CSL-News's split label files are written from its JSON by the first fit: read the JSON itself
    source = dm.label_file if isinstance(dm, CSLNewsDataModule) else labels_file
    row = {"samples": 0, "malformed": 0, "present": 0, "missing": 0, "unreadable": "not read"}
    if not source.is_file():
        return row, [(split, str(source), "no label file", f"{source} not found")]
    problems: list[Problem] = []
    bad: list[tuple[str, str]] = []
    try:
        if isinstance(dm, CSLNewsDataModule):
            labels = unisign_labels(read_csl_news_labels(source, dm.dev_fraction)[split], source, bad)
        else:
            labels = read_unisign_labels(source, bad=bad)
    except (OSError, ValueError, pickle.UnpicklingError) as err:  # the whole file is unusable
        return row, [(split, str(source), "unreadable label file", str(err))]
    row["samples"], row["malformed"] = len(labels) + len(bad), len(bad)
    problems += [(split, name, "malformed label", message) for name, message in bad]
    pose_paths = dm._pose_paths(labels)
    present = []
    for name, path in pose_paths:
        if path.is_file():
            present.append((name, path))
        else:
            problems.append((split, name, "missing pose file", f"{path} not found"))
    row["present"], row["missing"] = len(present), len(pose_paths) - len(present)
    index = read_index(dm.cache_dir, split) if dm.packed else None
    if index is not None and index["fingerprint"] == fingerprint(labels_file, [p for _, p in pose_paths]):
        errors = {name: entry for name, entry in index["errors"].items() if entry[0] != "missing"}
        row["unreadable"] = f"{len(errors)} (packed cache)"
        problems += [(split, name, f"unreadable pose file ({reason})", message)
                     for name, (reason, message) in errors.items()]
    elif read_poses_:
        unreadable = 0
        for name, path in present:
            try:
                read_poses(path)
            except (ValueError, OSError, pickle.UnpicklingError) as err:
                unreadable += 1
                problems.append((split, name, f"unreadable pose file ({error_reason(err)})", str(err)))
        row["unreadable"] = unreadable
    return row, problems


def _pt_split(dm: GlossToPoseDataModule, split: str, read_poses_: bool) -> tuple[dict, list[Problem]]:
    paths = pt_split_paths(dm.pt_dir, split)
    missing = [path for path in paths.values() if not path.is_file()]
    if missing:
        return {"lines": "-", "malformed": "-"}, [(split, str(p), "no PT file", f"{p} not found") for p in missing]
    counts = {}
    for suffix, path in paths.items():
        with path.open("rb") as f:
            counts[suffix] = sum(1 for _ in f)
    row = {"lines": counts["skels"] if len(set(counts.values())) == 1 else counts, "malformed": "not read"}
    if len(set(counts.values())) != 1:
        return row, [(split, str(dm.pt_dir), "line counts disagree", ", ".join(f"{split}.{s}: {n}" for s, n in counts.items()))]
    if not read_poses_:
        return row, []
    _, skipped = read_pt_split(dm.pt_dir, split, on_bad_sample="skip")
    row["malformed"] = len(skipped)
    return row, [(split, name, "malformed sample", message) for name, message in skipped]


def _table(rows: dict[str, dict]) -> list[str]:
    columns = list(next(iter(rows.values())))
    cells = [["split", *columns]] + [[split, *(str(row[c]) for c in columns)] for split, row in rows.items()]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return ["  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(line, widths)))
            for line in cells]


def validate(dm, read_poses_: bool = False) -> tuple[list[str], list[Problem]]:
    """The report's lines and every problem found, for a translation or production DataModule."""
    if isinstance(dm, SignTranslationDataModule):
        where, check = f"labels {dm.label_dir}, poses {dm.pose_dir}", _translation_split
    elif isinstance(dm, GlossToPoseDataModule):
        where, check = f"PT files {dm.pt_dir} ({'/'.join(PT_SUFFIXES)})", _pt_split
    else:
        raise ConfigError(f"validate_data reads translation and production datasets, not {type(dm).__name__}")
    rows, problems = {}, []
    for split in SPLITS:
        rows[split], found = check(dm, split, read_poses_)
        problems += found
    lines = [f"{type(dm).__name__} ({dm.dataset}): {where}", *_table(rows)]
    by_kind: dict[tuple[str, str], list[str]] = defaultdict(list)
    for split, name, kind, _ in problems:
        by_kind[(split, kind)].append(name)
    for (split, kind), names in by_kind.items():
        more = f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else ""
        lines.append(f"{split}: {len(names)} {kind}: {', '.join(names[:SHOWN])}{more}")
    if dm.dataset == "synthsign" and problems:
        lines.append("(SynthSign is generated on the first fit, into data_dir)")
    return lines, problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning validate_data", description=__doc__.split("\n\n")[1],
        epilog="Every other argument (--config, --data.init_args.KEY VALUE, ...) is read as `lightning fit` reads it.")
    parser.add_argument("--read_poses", action="store_true",
                        help="read every present pose file (or parse every .skels line): slower, finds corrupt ones")
    parser.add_argument("--list", type=Path, metavar="FILE", help="write every problem found to FILE (TSV)")
    options, config_args = parser.parse_known_args(argv)
    if not config_args:
        parser.error("give the experiment's --config (and any overrides)")
    start = time.perf_counter()
    dm = datamodule_from_config(config_args, drop=("stream_dir", "stream_timeout", "stream_cache_dir"))
    lines, problems = validate(dm, options.read_poses)
    if options.list is not None:
        with options.list.open("w", encoding="utf-8") as f:
            f.write("split\tname\tproblem\tmessage\n")
            f.writelines("\t".join(" ".join(field.split()) for field in problem) + "\n" for problem in problems)
        lines.append(f"all {len(problems)} problems listed in {options.list}")
    verdict = f"{len(problems)} problems" if problems else "complete"
    lines.append(f"{verdict} ({time.perf_counter() - start:.1f} s)")
    print("\n".join(lines))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
