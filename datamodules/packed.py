"""Packed pose cache: every pose pickle of a split unpickled once into one memory-mapped array.

Layout under ``cache_dir`` (the DataModule uses ``<label_dir>/packed``), per split:

- ``<split>.npy``: float32 (N_frames, 69, 3) = x, y, score of the four parts' nodes
  (``part_nodes``: the only keypoints the model sees) in every frame of every sample,
  concatenated in label order. Raw coordinates, not normalised parts: Uni-Sign's
  normalisation depends on which frames are sampled (crop_scale spans the sampled frames), so
  it stays a train-time step.
- ``<split>.index.json``: ``{"version", "fingerprint", "frames", "samples": {name: [offset,
  length]}, "errors": {name: [reason, message]}}``.

``fingerprint`` hashes the node list, the label file and every pose file it refers to (size,
mtime), so a touched, replaced or deleted source (or a changed part layout) makes the cache
stale and ``ensure_packed`` rebuilds it.
A pose file that cannot be read while packing is not an error here: its reason and message
are stored and ``PackedPoses.read`` raises the same exception type with the same message
when the sample is loaded, so ``on_bad_sample`` behaves exactly as on the pickle path.
Both files are written to temporaries and renamed into place, the index last (it is the
commit marker: a reader never pairs a fresh index with a half-written array).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from datamodules.formats import UnsafePickleError, read_pose_pickle
from datamodules.keypoints import PART_NODES_COCO, part_nodes

FORMAT_VERSION = 2  # 1 stored all 133 COCO keypoints
FRAME_SHAPE = (len(PART_NODES_COCO), 3)  # x, y, score
# Exception types a pose file can fail with, by the reason name the translation dataset uses.
ERROR_TYPES = {"missing": FileNotFoundError, "unsafe": UnsafePickleError, "invalid": ValueError}


def _stat(path: Path) -> list:
    try:
        st = path.stat()
    except FileNotFoundError:
        return [path.name, None]
    return [path.name, st.st_size, st.st_mtime_ns]


def fingerprint(label_path: Path, pose_paths: Sequence[Path]) -> str:
    """sha256 over the stored node list, then the label file's and each pose file's (name, size,
    mtime_ns), in order."""
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, PART_NODES_COCO.tolist(), _stat(Path(label_path))]).encode())
    for path in pose_paths:
        h.update(json.dumps(_stat(Path(path))).encode())
    return h.hexdigest()


def paths(cache_dir: Path, split: str) -> tuple[Path, Path]:
    """(array, index) paths of one split's cache."""
    return Path(cache_dir) / f"{split}.npy", Path(cache_dir) / f"{split}.index.json"


def error_reason(err: Exception) -> str:
    """The skip reason of a pose-reading error, for the index and the translation dataset (any
    other OSError is invalid)."""
    if isinstance(err, FileNotFoundError):
        return "missing"
    return "unsafe" if isinstance(err, UnsafePickleError) else "invalid"


def _npy_header(frames: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.dtype(np.float32).str, "fortran_order": False, "shape": (frames, *FRAME_SHAPE)})
    return buf.getvalue()


def build_packed(cache_dir: Path, split: str, label_path: Path, samples: Sequence[tuple[str, Path]]) -> dict:
    """Read each ``(name, pose_path)`` through ``read_pose_pickle`` and write the split's cache.

    Frames stream straight to disk (a split never has to fit in memory). Returns the index.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    array_path, index_path = paths(cache_dir, split)
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_array, tmp_index = array_path.with_name(array_path.name + tag), index_path.with_name(index_path.name + tag)
    header = _npy_header(0)
    index = {"version": FORMAT_VERSION, "fingerprint": fingerprint(label_path, [p for _, p in samples]),
             "frames": 0, "samples": {}, "errors": {}}
    try:
        with tmp_array.open("wb") as f:
            f.write(header)  # placeholder; rewritten with the real frame count below
            for name, pose_path in samples:
                try:
                    keypoints, scores = read_pose_pickle(pose_path)  # (T, 133, 2), (T, 133)
                except (OSError, ValueError, pickle.UnpicklingError) as err:
                    index["errors"][name] = [error_reason(err), str(err)]
                    continue
                clip = part_nodes(keypoints, scores)  # (T, 69, 3) float32
                f.write(clip.tobytes())
                index["samples"][name] = [index["frames"], len(clip)]
                index["frames"] += len(clip)
            final = _npy_header(index["frames"])
            # numpy pads the header so the first axis can grow in place; this fires only if a numpy stops doing so
            if len(final) != len(header):
                raise RuntimeError(f"{array_path}: .npy header size changed with the frame count")
            f.seek(0)
            f.write(final)
        os.replace(tmp_array, array_path)
        tmp_index.write_text(json.dumps(index))
        os.replace(tmp_index, index_path)
    finally:
        tmp_array.unlink(missing_ok=True)
        tmp_index.unlink(missing_ok=True)
    return index


def read_index(cache_dir: Path, split: str) -> dict | None:
    """The split's index, or None when absent, unreadable or from another format version."""
    array_path, index_path = paths(cache_dir, split)
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("version") != FORMAT_VERSION or not array_path.is_file():
        return None
    return index


def ensure_packed(cache_dir: Path, split: str, label_path: Path, samples: Sequence[tuple[str, Path]]) -> bool:
    """Build the split's cache unless it is fresh for these sources; True when it was (re)built."""
    if PackedPoses.open(cache_dir, split, label_path, [p for _, p in samples]) is not None:
        return False
    build_packed(cache_dir, split, label_path, samples)
    return True


class PackedPoses:
    """One split's packed frames: ``read(name)`` gives ``part_nodes`` of ``read_pose_pickle``'s
    keypoints and scores, (T, 69, 3).

    The memory map opens lazily and is dropped when pickled, so DataLoader workers (fork or
    spawn) each map the file themselves instead of receiving a copy of the array.
    """

    def __init__(self, cache_dir: Path, split: str, index: dict):
        self.array_path = paths(cache_dir, split)[0]
        self.samples, self.errors = index["samples"], index["errors"]
        self.frames = index["frames"]
        self._array: np.ndarray | None = None

    @classmethod
    def open(cls, cache_dir: Path, split: str, label_path: Path, pose_paths: Sequence[Path]) -> PackedPoses | None:
        """The cache if it is fresh for these sources, else None."""
        index = read_index(cache_dir, split)
        if index is None or index["fingerprint"] != fingerprint(label_path, pose_paths):
            return None
        return cls(cache_dir, split, index)

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_array": None}

    def array(self) -> np.ndarray:
        if self._array is None:
            array = np.load(self.array_path, mmap_mode="r")  # (N_frames, 69, 3)
            if array.shape != (self.frames, *FRAME_SHAPE) or array.dtype != np.float32:
                raise ValueError(f"{self.array_path}: shape {array.shape} {array.dtype} does not match its "
                                 f"index ({self.frames}, {FRAME_SHAPE[0]}, {FRAME_SHAPE[1]}) float32; "
                                 "delete the packed folder to rebuild it")
            self._array = array.view(np.ndarray)  # plain views: np.memmap's __getitem__ costs more than the copy
        return self._array

    def read(self, name: str) -> np.ndarray:
        """(T, 69, 3) float32 x, y, score of sample ``name``: a view of the map (indexing it reads
        only the frames asked for). Re-raises, with its type and message, the error found at packing."""
        if name in self.errors:
            reason, message = self.errors[name]
            raise ERROR_TYPES[reason](message)
        if name not in self.samples:
            raise KeyError(f"{self.array_path}: sample {name!r} is not in the packed index")
        offset, length = self.samples[name]
        return self.array()[offset:offset + length]
