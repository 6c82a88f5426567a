"""CSL-News (Uni-Sign's pretraining corpus) as a translation DataModule, and SynthSign in its layout.

Layout, as Uni-Sign releases it (``docs/DATASET.md``, ``download_scripts/download_CSL_News.py``):

- ``CSL_News_Labels.json``: one JSON list, ``[{"video": "<name>.mp4", "pose": "<name>.pkl",
  "text": "<Chinese sentence>"}, ...]``; no glosses.
- ``pose_format/<pose>``: Uni-Sign pose pickles (``keypoints`` (T, 1, 133, 2) divided by the
  frame's width and height, ``scores`` (T, 1, 133)) that also hold ``w_h`` = [width, height] of
  the video (its RGB branch needs pixels; the pose model does not, so it is read and ignored).

Split: Uni-Sign's ``S2T_Dataset_news`` takes ``[0, int(0.99 N))`` of the JSON list for training
and ``[int(0.99 N), N)`` for dev *and* for test (its ``config.py`` points all three phases at the
same file), so here ``dev_fraction: 0.01`` and ``labels.test`` = ``labels.dev``.

How it reuses the translation path: the JSON is rewritten once into Uni-Sign label files
(``split_dir/labels.{train,dev,test}``: ``name`` = the video name, Uni-Sign's ``name_sample``;
``video_path`` = the pose file, relative to ``pose_dir``), which ``SignTranslationDataModule``
then reads, validates, packs and normalises as for CSL-Daily: the records, batches, bad-sample
handling and packed cache are that DataModule's. The label files are rewritten only when the JSON
or the split changes (``split_dir/source.json`` holds what they were made from), so the packed
cache stays fresh. A JSON entry that is not an object with ``video`` and ``pose`` strings, or two
entries with one name, is an error naming the file and entry; an entry without usable ``text``
goes through ``on_bad_sample`` like any label.

Uni-Sign differences on purpose: a pose file that cannot be read raises (or is skipped with
``on_bad_sample: skip``) instead of being replaced by a random other sample (``num_retries``).

``python -m datamodules.csl_news --synthsign DIR --out OUT`` writes a SynthSign corpus (``DIR``,
Uni-Sign layout) in CSL-News's layout, ``w_h`` included, so the demo and the tests exercise this
reader; ``synthsign: true`` does the same from ``prepare_data``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import pickle
import uuid
from pathlib import Path

from datamodules.batches import SPLITS
from datamodules.formats import load_pickle, read_unisign_labels
from datamodules.translation import SignTranslationDataModule

log = logging.getLogger(__name__)

LABEL_FILE = "CSL_News_Labels.json"
UNISIGN_DEV_FRACTION = 0.01  # S2T_Dataset_news: train end = int(N * 0.99)
SPLIT_FORMAT = 1  # bump when the label files written below change meaning
SYNTHSIGN_W_H = [1280, 720]  # a CSL-News-like frame size for the w_h that SynthSign pickles lack


def split_bounds(count: int, dev_fraction: float = UNISIGN_DEV_FRACTION) -> dict[str, range]:
    """Entry ranges of each split in a JSON list of ``count`` entries, as Uni-Sign cuts it."""
    end = int(count * (1 - dev_fraction))  # 1 - 0.01 == 0.99 exactly in float64: Uni-Sign's boundary
    return {"train": range(0, end), "dev": range(end, count), "test": range(end, count)}


def read_csl_news_labels(label_file: str | Path, dev_fraction: float = UNISIGN_DEV_FRACTION
                         ) -> dict[str, dict[str, dict]]:
    """The JSON's entries per split, in Uni-Sign's label schema ``{name: {name, gloss, text,
    video_path}}`` (``video_path`` holds the pose file). Structural problems raise ValueError
    naming the file and the entry; ``text`` is checked later, by the label reader."""
    label_file = Path(label_file)
    try:
        entries = json.loads(label_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{label_file}: CSL-News label file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{label_file}: not a JSON file ({err})") from err
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{label_file}: expected a non-empty JSON list of {{video, pose, text}} entries")
    labels: list[dict] = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) and entry[k] for k in ("video", "pose")):
            raise ValueError(f"{label_file}: entry {number} is not an object with 'video' and 'pose' strings: "
                             f"{str(entry)[:200]}")
        name = entry["video"]
        if name in seen:  # the packed cache and the batches name samples by it
            raise ValueError(f"{label_file}: entries {seen[name]} and {number} are both video {name!r}")
        seen[name] = number
        labels.append({"name": name, "gloss": [], "text": entry.get("text"), "video_path": entry["pose"]})
    return {split: {labels[i]["name"]: labels[i] for i in bounds}
            for split, bounds in split_bounds(len(labels), dev_fraction).items()}


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_split_labels(label_file: str | Path, split_dir: str | Path,
                       dev_fraction: float = UNISIGN_DEV_FRACTION) -> bool:
    """Write ``split_dir/labels.{train,dev,test}`` from the JSON unless they are already what it
    gives; True when written. Untouched files keep the packed cache fresh (it fingerprints them)."""
    label_file, split_dir = Path(label_file), Path(split_dir)
    try:
        st = label_file.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{label_file}: CSL-News label file not found") from None
    source = {"format": SPLIT_FORMAT, "label_file": str(label_file.resolve()), "size": st.st_size,
              "mtime_ns": st.st_mtime_ns, "dev_fraction": dev_fraction}
    stamp = split_dir / "source.json"
    try:
        fresh = json.loads(stamp.read_text()) == source and all((split_dir / f"labels.{s}").is_file() for s in SPLITS)
    except (OSError, ValueError):
        fresh = False
    if fresh:
        return False
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, labels in read_csl_news_labels(label_file, dev_fraction).items():
        # gzip pickle as Uni-Sign's label files; mtime=0 so equal content gives equal bytes
        _atomic_write(split_dir / f"labels.{split}", gzip.compress(pickle.dumps(labels, protocol=4), mtime=0))
    _atomic_write(stamp, json.dumps(source).encode())
    log.info("wrote CSL-News splits of %s into %s", label_file, split_dir)
    return True


def write_synthsign_csl_news(unisign_dir: str | Path, out: str | Path, w_h: list[int] = SYNTHSIGN_W_H) -> Path:
    """SynthSign's Uni-Sign layout (``unisign_dir``: ``labels.*`` + ``pose_format/``) rewritten as
    CSL-News: ``out/pose_format/<name>.pkl`` with ``w_h`` added and ``out/CSL_News_Labels.json``
    listing train, dev and test in that order (so Uni-Sign's last 1% is the end of SynthSign's test
    split). The JSON is written last and atomically: its presence means the folder is complete.
    Returns the JSON's path."""
    unisign_dir, out = Path(unisign_dir), Path(out)
    poses = out / "pose_format"
    poses.mkdir(parents=True, exist_ok=True)
    entries = []
    for split in SPLITS:
        for label in read_unisign_labels(unisign_dir / f"labels.{split}").values():
            stem = Path(label["video_path"]).stem
            pose = load_pickle(unisign_dir / "pose_format" / f"{stem}.pkl")
            _atomic_write(poses / f"{stem}.pkl", pickle.dumps({**pose, "w_h": list(w_h)}, protocol=4))
            entries.append({"video": f"{stem}.mp4", "pose": f"{stem}.pkl", "text": label["text"]})
    label_file = out / LABEL_FILE
    _atomic_write(label_file, json.dumps(entries, ensure_ascii=False).encode("utf-8"))
    return label_file


class CSLNewsDataModule(SignTranslationDataModule):
    """CSL-News pose -> Chinese text, Uni-Sign's stage-1 data (see the module docstring).

    ``label_file``: ``CSL_News_Labels.json``; ``pose_dir``: its ``pose_format`` folder;
    ``split_dir``: where the per-split label files (and the packed cache, under ``packed/``) go,
    by default ``<label_file's folder>/signlab_splits``; ``cache_dir`` moves the packed cache out, as
    for the parent (``<cache_dir>/<split_dir's name>-<hash>/``). ``synthsign: true`` first generates
    SynthSign into ``data_dir`` (``synthsign_kwargs``) and writes it at ``label_file``/``pose_dir``
    in CSL-News's layout. Everything else is ``SignTranslationDataModule``'s.
    """

    test_splits = ("test",)  # Uni-Sign's test phase is its dev phase: one evaluation, not two

    def __init__(self, label_file: str = f"data/CSL_News/{LABEL_FILE}", pose_dir: str = "data/CSL_News/pose_format",
                 split_dir: str | None = None, dev_fraction: float = UNISIGN_DEV_FRACTION, synthsign: bool = False,
                 data_dir: str = "data/synthsign", tokenizer: str = "google/mt5-base", language: str = "zh",
                 max_len: int = 256, max_target_len: int = 64, batch_size: int = 8, num_workers: int = 0,
                 on_bad_sample: str = "raise", seed: int = 0, synthsign_kwargs: dict | None = None,
                 packed: bool = True, cache_dir: str | None = None):
        if not 0 < dev_fraction < 1:
            raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
        label_file_path = Path(label_file)
        split_dir = split_dir or str(label_file_path.parent / "signlab_splits")
        # the parent reads Uni-Sign label files from label_dir: the split files written from the JSON
        super().__init__(dataset="csl_daily", data_dir=data_dir, label_dir=split_dir, pose_dir=pose_dir,
                         tokenizer=tokenizer, language=language, max_len=max_len, max_target_len=max_target_len,
                         batch_size=batch_size, num_workers=num_workers, on_bad_sample=on_bad_sample, seed=seed,
                         synthsign_kwargs=synthsign_kwargs, packed=packed, cache_dir=cache_dir)
        self.dataset = "csl_news"  # after the parent's check; its prepare_data generates nothing for it
        self.label_file, self.dev_fraction, self.synthsign = label_file_path, dev_fraction, synthsign

    def _pose_paths(self, labels: dict[str, dict]) -> list[tuple[str, Path]]:
        """CSL-News names each pose file in the JSON (``pose``), relative to ``pose_dir``."""
        return [(label["name"], self.pose_dir / label["video_path"]) for label in labels.values()]

    def _ensure_splits(self) -> None:
        if self.synthsign and not self.label_file.is_file():
            from datamodules.synthetic import ensure_synthsign

            root = ensure_synthsign(self.data_dir, **self.synthsign_kwargs)
            written = write_synthsign_csl_news(root / "unisign", self.label_file.parent)
            if written != self.label_file or self.pose_dir != written.parent / "pose_format":
                raise ValueError(f"synthsign: true writes {written} and {written.parent / 'pose_format'}; "
                                 f"set label_file and pose_dir to them (got {self.label_file}, {self.pose_dir})")
        write_split_labels(self.label_file, self.label_dir, self.dev_fraction)

    def prepare_data(self) -> None:
        self._ensure_splits()
        super().prepare_data()  # packs each split (dataset is not "synthsign": nothing generated)

    def setup(self, stage: str | None = None) -> None:
        # prepare_data runs on one process per node; this keeps a bare setup() working too (it only
        # writes when the splits are stale, so it never invalidates a cache prepare_data built)
        self._ensure_splits()
        super().setup(stage)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datamodules.csl_news", description=(
        "Write a SynthSign corpus (Uni-Sign layout) in CSL-News's layout, or check a CSL-News label file."))
    parser.add_argument("--synthsign", type=Path, help="SynthSign folder (its unisign/ is read)")
    parser.add_argument("--out", type=Path, help="output folder for --synthsign")
    parser.add_argument("--labels", type=Path, help=f"a {LABEL_FILE} to check and count")
    args = parser.parse_args(argv)
    if args.synthsign:
        if not args.out:
            parser.error("--synthsign needs --out")
        print(write_synthsign_csl_news(args.synthsign / "unisign", args.out))
    if args.labels:
        splits = read_csl_news_labels(args.labels)
        print(json.dumps({split: len(labels) for split, labels in splits.items()}))
    if not (args.synthsign or args.labels):
        parser.error("nothing to do: pass --synthsign DIR --out OUT or --labels FILE")


if __name__ == "__main__":
    main()
