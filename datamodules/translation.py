"""``SignTranslationDataModule``: COCO-WholeBody pose pickles -> spoken-language text.

Batch keys are documented in ``datamodules/batches.py``. Datasets and where files live:

- ``csl_daily``: ``label_dir/labels.{train,dev,test}`` (Uni-Sign labels) and
  ``pose_dir/<video_path stem>.pkl`` (Uni-Sign's ``pose_format``).
- ``phoenix2014t``: ``label_dir/labels.{train,dev,test}`` (GFSLT-VLP labels; no video_path)
  and ``pose_dir/<name>.pkl``, where ``name`` is the label's own name including its split
  prefix, e.g. ``pose_dir/dev/11August_2010_Wednesday_tagesschau-2.pkl``.
- ``synthsign``: generated into ``data_dir`` by ``prepare_data``; labels and poses under
  ``data_dir/unisign`` are read through the same readers as the real datasets.

Where a pose pickle is missing, a pose-format ``<stem>.pose`` beside it is read instead
(``datamodules.pose_format_io``: COCO-WholeBody or MediaPipe Holistic; the pose-format extra).

Frames: at most ``max_len``; training draws a sorted random subset seeded by
``(seed, epoch, index)``, dev/test take evenly spaced frames (deterministic evaluation).

Errors: a missing/empty label file fails in ``setup``. A label entry without text or with a
field of the wrong type, and a missing, corrupt, refused (unsafe), empty, non-finite or
unconfident (fewer than 4 body points above the 0.3 score threshold, so Uni-Sign would feed
all-zero parts) pose file raise an error naming the sample and file, or with
``on_bad_sample="skip"`` are dropped and counted in ``self.skipped`` (reason -> names), reported
in summary lines and listed in a file (``datamodules/batches.py``). Label entries and missing files
are checked in ``setup``; pose contents when the sample is loaded.

Packed cache (``packed=True``, the default): ``prepare_data`` unpickles and normalises every
split's pose files once into ``<label_dir>/packed/``, or with ``cache_dir`` set into
``<cache_dir>/<label folder name>-<hash of its absolute path>/`` (so a read-only dataset still gets
the packed path, and one ``cache_dir`` serves every dataset); ``datamodules/packed.py``:
memory-mapped arrays plus an index, rebuilt when a label or pose file changes. ``setup`` uses it
when it is fresh and otherwise reads the pickles. A damaged cache (checksum) is a
``PackedCacheError``, never a skipped sample. Batches are the same either way, bad samples included:
bit-identical for clips of at most ``max_len`` frames, within float32 rounding (a few 1e-7) for
longer ones, whose normalised frames are moved onto the sampled frames' crop box.

DDP: see ``SplitDataModule`` in ``datamodules/batches.py`` (dev/test are sharded without
padding, so the model gathers its predictions; ``use_distributed_sampler: false``).
"""
from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.batches import (SPLITS, BadSampleError, SplitDataModule, TranslationCollate,
                                 check_on_bad_sample, record_skips, skip_marker)
from datamodules.formats import read_poses, read_unisign_labels
from datamodules.keypoints import (SCORE_THRESHOLD, normalise_clips, part_nodes, rebox_clips,
                                   sample_frame_indices)
from datamodules.packed import PackedClip, PackedPoses, ensure_packed, error_reason
from datamodules.tokenization import load_tokenizer

log = logging.getLogger(__name__)

DATASETS = ("csl_daily", "phoenix2014t", "synthsign")
DEFAULT_LANGUAGE = {"csl_daily": "zh", "phoenix2014t": "de"}


class _LowScore(ValueError):
    """The body is not confidently detected, so Uni-Sign's normalisation yields zeros."""


class PoseTextDataset(Dataset):
    """One label file's samples, fetched a batch at a time (``__getitems__``).

    From pickles, each sample's sampled frames are unpickled and the batch is normalised in one
    ``normalise_clips`` call. From the packed cache, a clip that keeps all its frames is
    already normalised, and the cut ones (longer than ``max_len``) are moved onto their own
    crop boxes in one ``rebox_clips`` call. So per-sample Python overhead stays small.

    ``records`` hold ``name``, ``text``, ``gloss``, ``pose_path`` and the tokenised
    ``target_ids``. A key is an index, or ``(index, epoch)`` from the training ``ShardSampler``;
    ``train`` turns on random frame subsets. ``poses`` is the split's packed cache, or None to
    unpickle ``pose_path`` per item.
    """

    def __init__(self, records: list[dict], max_len: int, train: bool, seed: int,
                 on_bad_sample: str, poses: PackedPoses | None = None):
        self.records, self.max_len, self.train, self.seed = records, max_len, train, seed
        self.on_bad_sample, self.poses = on_bad_sample, poses

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list[dict]:
        """Items (or skip markers) for ``keys``, in order; the DataLoader calls this per batch."""
        items: list[dict | None] = [None] * len(keys)
        groups = {"raw": [], "whole": [], "cut": []}  # (position, record, nodes, clip) by what normalising is left
        for pos, key in enumerate(keys):
            index, epoch = key if isinstance(key, tuple) else (key, 0)
            record = self.records[index]
            try:
                kind, nodes, clip = self._load(record, index, epoch)
                groups[kind].append((pos, record, nodes, clip))
            except (OSError, ValueError, pickle.UnpicklingError) as err:
                items[pos] = self._bad(record, err)
        for kind, loaded in groups.items():
            if not loaded:
                continue
            per_clip = [entry[2] for entry in loaded]
            clips = [entry[3] for entry in loaded]
            if kind == "whole":  # already normalised: the collate copies them straight out of the map
                self._fill(items, loaded, [torch.from_numpy(n) for n in per_clip], [clip.scale for clip in clips])
                continue
            nodes = np.concatenate(per_clip)  # (N, 69, 3), an owned copy
            lengths = [len(n) for n in per_clip]
            if kind == "raw":
                normalised, _, scales = normalise_clips(nodes, np.array(lengths))
            else:
                normalised, scales = rebox_clips(nodes, np.concatenate([clip.extremes for clip in clips]),
                                                 np.array(lengths), np.array([clip.corner for clip in clips]).T,
                                                 np.array([clip.scale for clip in clips]))
            self._fill(items, loaded, normalised.split(lengths), scales.tolist())
        return items

    def _load(self, record: dict, index: int, epoch: int) -> tuple[str, np.ndarray, PackedClip | None]:
        """One sample's sampled frames, (kind, (T', 69, 3) nodes, packed clip): ``raw`` part nodes
        from the pickle (clip None), or from the packed cache a clip kept ``whole`` (nodes already
        normalised) or ``cut`` to ``max_len`` frames (nodes normalised with the whole clip's box; the
        clip's extremes rows are the sampled frames'). Only the sampled frames leave the pickle or the map."""
        if self.poses is None:
            keypoints, scores = read_poses(record["pose_path"])  # (T, 133, 2), (T, 133)
            return "raw", part_nodes(keypoints, scores, self._frames(len(keypoints), index, epoch)), None
        clip = self.poses.read(record["name"])
        frames = self._frames(len(clip.nodes), index, epoch)
        if frames is None:
            return "whole", clip.nodes, clip
        return "cut", clip.nodes[frames], clip._replace(extremes=clip.extremes[frames])

    def _frames(self, num_frames: int, index: int, epoch: int) -> np.ndarray | None:
        """The frames to keep, None for all: the seeded generator (about 15 us) is built only for
        a clip longer than ``max_len``, the only case with anything to draw."""
        if num_frames <= self.max_len:
            return None
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
        return sample_frame_indices(num_frames, self.max_len, rng)

    def _fill(self, items: list, loaded: list, normalised: Sequence[torch.Tensor], scales: list[float]) -> None:
        """Items of ``loaded`` from their normalised frames (one (T, 69, 3) tensor each), at their positions."""
        for (pos, record, _, _), nodes, scale in zip(loaded, normalised, scales):
            if scale == 0:
                items[pos] = self._bad(record, _LowScore(
                    f"{record['pose_path']}: fewer than 4 body keypoints score above "
                    f"{SCORE_THRESHOLD} (or they coincide); every part would be zero"))
                continue
            items[pos] = {"nodes": nodes,  # the collate cuts the parts
                          **{k: record[k] for k in ("text", "gloss", "name", "target_ids")}}

    def _bad(self, record: dict, err: Exception) -> dict:
        """A skip marker for a sample that cannot be used, or the error naming it."""
        message = f"sample {record['name']!r}: {err}"
        if self.on_bad_sample == "raise":
            raise BadSampleError(message) from err
        reason = "low_score" if isinstance(err, _LowScore) else error_reason(err)
        return skip_marker(record["name"], reason, message)


def label_path(label_dir: Path, split: str) -> Path:
    """A split's label file in a Uni-Sign / GFSLT-VLP label folder."""
    return Path(label_dir) / f"labels.{split}"


def packed_cache_dir(label_dir: Path, cache_dir: str | None) -> Path:
    """Where the packed cache of the labels in ``label_dir`` lives (module docstring)."""
    if cache_dir is None:
        return Path(label_dir) / "packed"
    label_dir = Path(label_dir).resolve()
    return Path(cache_dir) / f"{label_dir.name}-{hashlib.sha256(str(label_dir).encode()).hexdigest()[:12]}"


class SignTranslationDataModule(SplitDataModule):
    """Pose -> text data for Geo-Sign / Uni-Sign (see the module docstring for layouts).

    ``synthsign_kwargs`` go to ``ensure_synthsign`` (corpus size, seed, language mode).
    """

    test_splits = ("dev", "test")  # Uni-Sign's protocol reports both at test time

    def __init__(self, dataset: str = "synthsign", data_dir: str = "data/synthsign",
                 label_dir: str | None = None, pose_dir: str | None = None,
                 tokenizer: str = "synthsign-zh", language: str | None = None,
                 max_len: int = 256,  # Uni-Sign's max_length (frames)
                 max_target_len: int = 64,  # tokens incl. eos; CSL-Daily's longest text is 43 chars
                 batch_size: int = 8, num_workers: int = 0, on_bad_sample: str = "raise",
                 seed: int = 0, synthsign_kwargs: dict | None = None, packed: bool = True,
                 cache_dir: str | None = None):
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        if dataset != "synthsign" and (label_dir is None or pose_dir is None):
            raise ValueError(f"dataset {dataset!r} needs label_dir and pose_dir")
        if max_len <= 0 or max_target_len <= 1 or batch_size <= 0:
            raise ValueError("max_len, batch_size must be positive and max_target_len > 1")
        self.save_hyperparameters()
        self.dataset, self.data_dir = dataset, Path(data_dir)
        self.synthsign_kwargs = dict(synthsign_kwargs or {})
        self.max_len, self.seed, self.packed = max_len, seed, packed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        unisign_dir = self.data_dir / "unisign"
        self.label_dir = Path(label_dir) if label_dir else unisign_dir
        self.pose_dir = Path(pose_dir) if pose_dir else unisign_dir / "pose_format"
        self.tokenizer = load_tokenizer(tokenizer)
        if language is None:  # ISO 639-1 code of the target text (the model's prompt uses it)
            language = DEFAULT_LANGUAGE.get(dataset) or (
                tokenizer.removeprefix("synthsign-") if tokenizer.startswith("synthsign-") else None)
        if language is None:
            raise ValueError(f"set language for dataset {dataset!r} with tokenizer {tokenizer!r}")
        self.language = language
        self.max_target_len = max_target_len
        self.collate_fn = TranslationCollate(self.tokenizer.pad_token_id)
        self.cache_dir = packed_cache_dir(self.label_dir, cache_dir)

    def _pose_paths(self, labels: dict[str, dict]) -> list[tuple[str, Path]]:
        """(name, pose file path) of every label, in file order: ``<stem>.pkl``, or a pose-format
        ``<stem>.pose`` where only that exists."""
        stems = [Path(label["video_path"]).stem if label["video_path"] else label["name"] for label in labels.values()]
        paths = []
        for label, stem in zip(labels.values(), stems):
            pickle_path = self.pose_dir / f"{stem}.pkl"
            pose_path = pickle_path.with_suffix(".pose")
            paths.append((label["name"], pose_path if not pickle_path.exists() and pose_path.exists() else pickle_path))
        return paths

    def prepare_data(self) -> None:
        """SynthSign generation if asked for, then (``packed``) the packed cache of every split
        whose label file exists, rebuilt only when its sources changed."""
        super().prepare_data()
        if not self.packed:
            return
        for split in SPLITS:
            path = label_path(self.label_dir, split)
            if not path.is_file():
                continue  # setup reports it if the stage needs this split
            try:
                if ensure_packed(self.cache_dir, split, path, self._pose_paths(self._labels(path)[0])):
                    log.info("packed %s poses into %s", split, self.cache_dir)
            except OSError as err:  # e.g. a read-only dataset folder: training still works from pickles
                log.warning("cannot build the packed pose cache in %s (%s); reading pose pickles "
                            "(set cache_dir to a writable folder, or packed: false to silence this)",
                            self.cache_dir, err)
                return

    def _labels(self, labels_file: Path) -> tuple[dict[str, dict], list[tuple[str, str, str]]]:
        """The file's well-formed labels and, with ``on_bad_sample="skip"``, the skip entries of the
        malformed ones (with "raise" the first one raises, naming the file and sample)."""
        bad: list[tuple[str, str]] | None = [] if self.on_bad_sample == "skip" else None
        labels = read_unisign_labels(labels_file, bad=bad)
        return labels, [(name, "invalid", message) for name, message in bad or ()]

    def _build(self, split: str) -> PoseTextDataset:
        labels_file = label_path(self.label_dir, split)
        labels, malformed = self._labels(labels_file)
        record_skips(self.skipped, malformed)
        if not labels:
            raise ValueError(f"{labels_file}: no {'usable ' if malformed else ''}samples")
        records, missing = [], []
        pose_paths = self._pose_paths(labels)
        for label, (_, pose_path) in zip(labels.values(), pose_paths):
            if not pose_path.is_file():
                message = f"sample {label['name']!r}: pose file {pose_path} not found"
                if self.on_bad_sample == "raise":
                    raise FileNotFoundError(f"{labels_file}: {message}")
                missing.append((label["name"], "missing", message))
                continue
            records.append({"name": label["name"], "text": label["text"], "gloss": label["gloss"],
                            "pose_path": pose_path})
        record_skips(self.skipped, missing)
        if not records:
            raise ValueError(f"{labels_file}: none of the {len(labels)} samples has a pose file "
                             f"under {self.pose_dir}")
        # tokenised once per split; truncation keeps room for eos, so every target still ends with it
        encoded = self.tokenizer([r["text"] for r in records], truncation=True, max_length=self.max_target_len)
        for record, ids in zip(records, encoded["input_ids"]):
            record["target_ids"] = ids
        poses = PackedPoses.open(self.cache_dir, split, labels_file, [p for _, p in pose_paths]) if self.packed else None
        if self.packed and poses is None:
            log.warning("no fresh packed cache for %s in %s (prepare_data builds it); reading pose pickles",
                        split, self.cache_dir)
        return PoseTextDataset(records, self.max_len, split == "train", self.seed, self.on_bad_sample, poses)
