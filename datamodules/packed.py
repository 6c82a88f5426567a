"""Packed pose cache: every pose pickle of a split unpickled and normalised once into memory-mapped arrays.

Layout under ``cache_dir`` (the DataModule uses ``<label_dir>/packed``), per split:

- ``<split>.npy``: float32 (N_frames, 69, 3), the four parts' nodes (``part_nodes``: the only
  keypoints the model sees) of every frame of every sample, concatenated in label order, each
  clip normalised whole by ``normalise_clips``. That is the batch value of a clip that keeps
  all its frames, so loading it normalises nothing.
- ``<split>.extremes.npy``: float32 (N_frames, 5), ``body_extremes`` of the same frames. Uni-Sign's
  crop box spans the sampled frames only, so a clip cut to ``max_len`` frames gets its own box
  from these and ``rebox_clips`` maps its normalised rows onto it.
- ``<split>.index.json``: ``{"version", "fingerprint", "frames", "samples": {name: [offset,
  length, corner_x, corner_y, scale]}, "errors": {name: [reason, message]}}``, with the whole
  clip's crop box (scale 0: too few confident body points).

``fingerprint`` hashes the node list, the normalisation constants, the label file and every pose
file it refers to (size, mtime), so a touched, replaced or deleted source (or a changed part
layout) makes the cache stale and ``ensure_packed`` rebuilds it.
A pose file that is missing or whose content is bad is not an error here: its reason and
message are stored and ``PackedPoses.read`` raises the same exception type with the same message
when the sample is loaded, so ``on_bad_sample`` behaves exactly as on the pickle path. Any other
read error (permissions, I/O) may pass, and fixing it leaves the file's size and mtime as they
were, so it aborts the build instead of being stored: nothing is committed and the DataModule
reads pickles. All files are written to temporaries and renamed into place, the index last (it
is the commit marker: a reader never pairs a fresh index with half-written arrays); temporaries
of builds that were killed are removed by the next build.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from datamodules.formats import UnsafePickleError, read_pose_pickle
from datamodules.keypoints import (BODY_EXTREMES, MIN_VALID_BODY_POINTS, PART_NODES_COCO, PART_SLICES,
                                   SCORE_THRESHOLD, body_extremes, normalise_clips, part_nodes)

FORMAT_VERSION = 3  # 1 stored all 133 COCO keypoints, 2 the raw part nodes
# a frame's row in each array: (x, y, score) per node; the body's box extremes
ARRAYS = {"nodes": (len(PART_NODES_COCO), 3), "extremes": (len(BODY_EXTREMES),)}
# Exception types a pose file can fail with, by the reason name the translation dataset uses.
ERROR_TYPES = {"missing": FileNotFoundError, "unsafe": UnsafePickleError, "invalid": ValueError}


class PackedCacheError(RuntimeError):
    """The cache's files disagree with the index a run opened. Not a bad sample: it concerns
    every sample, so ``on_bad_sample="skip"`` must not swallow it."""


def _stat(path: Path) -> list:
    try:
        st = path.stat()
    except FileNotFoundError:
        return [path.name, None]
    return [path.name, st.st_size, st.st_mtime_ns]


def fingerprint(label_path: Path, pose_paths: Sequence[Path]) -> str:
    """sha256 over the format, the stored node list and the normalisation constants, then the label
    file's and each pose file's (name, size, mtime_ns), in order."""
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, PART_NODES_COCO.tolist(), SCORE_THRESHOLD, MIN_VALID_BODY_POINTS,
                                   _stat(Path(label_path))]).encode())
    for path in pose_paths:
        h.update(json.dumps(_stat(Path(path))).encode())
    return h.hexdigest()


def paths(cache_dir: Path, split: str) -> tuple[dict[str, Path], Path]:
    """({"nodes", "extremes"} array paths, index path) of one split's cache."""
    cache_dir = Path(cache_dir)
    arrays = {"nodes": cache_dir / f"{split}.npy", "extremes": cache_dir / f"{split}.extremes.npy"}
    return arrays, cache_dir / f"{split}.index.json"


def error_reason(err: Exception) -> str:
    """The skip reason of a pose-reading error, for the index and the translation dataset (any
    other OSError is invalid)."""
    if isinstance(err, FileNotFoundError):
        return "missing"
    return "unsafe" if isinstance(err, UnsafePickleError) else "invalid"


def _npy_header(frames: int, row: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.dtype(np.float32).str, "fortran_order": False, "shape": (frames, *row)})
    return buf.getvalue()


def build_packed(cache_dir: Path, split: str, label_path: Path, samples: Sequence[tuple[str, Path]]) -> dict:
    """Read each ``(name, pose_path)`` through ``read_pose_pickle`` and write the split's cache.

    Frames stream straight to disk (a split never has to fit in memory). Returns the index.
    """
    array_paths, index_path = paths(cache_dir, split)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(index_path.parent, split)
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = {key: path.with_name(path.name + tag) for key, path in array_paths.items()}
    tmp_index = index_path.with_name(index_path.name + tag)
    index = {"version": FORMAT_VERSION, "fingerprint": fingerprint(label_path, [p for _, p in samples]),
             "frames": 0, "samples": {}, "errors": {}}
    try:
        with ExitStack() as stack:
            files = {key: stack.enter_context(path.open("wb")) for key, path in tmp.items()}
            for key, f in files.items():  # placeholders; rewritten with the real frame count below
                f.write(_npy_header(0, ARRAYS[key]))
            for name, pose_path in samples:
                try:
                    keypoints, scores = read_pose_pickle(pose_path)  # (T, 133, 2), (T, 133)
                except (FileNotFoundError, ValueError, pickle.UnpicklingError) as err:
                    index["errors"][name] = [error_reason(err), str(err)]
                    continue
                clip = part_nodes(keypoints, scores)  # (T, 69, 3) float32
                normalised, corner, scale = normalise_clips(clip, np.array([len(clip)]))
                files["nodes"].write(normalised.numpy().tobytes())
                files["extremes"].write(body_extremes(torch.from_numpy(clip[:, PART_SLICES["body"]])).numpy().tobytes())
                index["samples"][name] = [index["frames"], len(clip), *corner[:, 0].tolist(), scale.item()]
                index["frames"] += len(clip)
            for key, f in files.items():
                final = _npy_header(index["frames"], ARRAYS[key])
                # numpy pads the header so the first axis can grow in place; this fires only if a numpy stops doing so
                if len(final) != len(_npy_header(0, ARRAYS[key])):
                    raise RuntimeError(f"{array_paths[key]}: .npy header size changed with the frame count")
                f.seek(0)
                f.write(final)
        for key, path in tmp.items():
            os.replace(path, array_paths[key])
        tmp_index.write_text(json.dumps(index))
        os.replace(tmp_index, index_path)
    finally:
        for path in (*tmp.values(), tmp_index):
            path.unlink(missing_ok=True)
    return index


def _remove_dead_temporaries(cache_dir: Path, split: str) -> None:
    """Delete ``<split>*.tmp-<pid>-*`` files whose build process is gone (killed mid-build: the
    ``finally`` below never ran), so they do not pile up at the size of the dataset."""
    for path in cache_dir.glob(f"{split}.*.tmp-*-*"):
        pid = path.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_index(cache_dir: Path, split: str) -> dict | None:
    """The split's index, or None when absent, unreadable or from another format version."""
    array_paths, index_path = paths(cache_dir, split)
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(index, dict) or index.get("version") != FORMAT_VERSION
            or not all(path.is_file() for path in array_paths.values())):
        return None
    return index


def ensure_packed(cache_dir: Path, split: str, label_path: Path, samples: Sequence[tuple[str, Path]]) -> bool:
    """Build the split's cache unless it is fresh for these sources; True when it was (re)built."""
    if PackedPoses.open(cache_dir, split, label_path, [p for _, p in samples]) is not None:
        return False
    build_packed(cache_dir, split, label_path, samples)
    return True


class PackedClip(NamedTuple):
    """One sample in the cache: views of its frames plus its whole-clip crop box."""
    nodes: np.ndarray  # (T, 69, 3) normalised as one clip by ``normalise_clips``
    extremes: np.ndarray  # (T, 5) ``body_extremes``, for ``rebox_clips``
    corner: tuple[float, float]
    scale: float  # 0: too few confident body points, every part is zeros


class PackedPoses:
    """One split's packed frames: ``read(name)`` gives the sample's ``PackedClip``.

    The memory maps open lazily and are dropped when pickled, so DataLoader workers (fork or
    spawn) each map the files themselves instead of receiving a copy of the arrays.
    """

    def __init__(self, cache_dir: Path, split: str, index: dict):
        self.array_paths = paths(cache_dir, split)[0]
        self.samples, self.errors = index["samples"], index["errors"]
        self.frames = index["frames"]
        self._arrays: dict[str, np.ndarray] | None = None

    @classmethod
    def open(cls, cache_dir: Path, split: str, label_path: Path, pose_paths: Sequence[Path]) -> PackedPoses | None:
        """The cache if it is fresh for these sources, else None."""
        index = read_index(cache_dir, split)
        if index is None or index["fingerprint"] != fingerprint(label_path, pose_paths):
            return None
        return cls(cache_dir, split, index)

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_arrays": None}

    def arrays(self) -> dict[str, np.ndarray]:
        """{"nodes": (N_frames, 69, 3), "extremes": (N_frames, 5)} memory maps, checked against the index."""
        if self._arrays is None:
            arrays = {}
            for key, path in self.array_paths.items():
                # copy-on-write: the views are writable (torch.from_numpy wants that), and no write
                # would ever reach the file
                array = np.load(path, mmap_mode="c")
                expected = (self.frames, *ARRAYS[key])
                if array.shape != expected or array.dtype != np.float32:
                    raise PackedCacheError(
                        f"{path}: shape {array.shape} {array.dtype} does not match the index this run read "
                        f"{expected} float32: the cache was rebuilt (another job's prepare_data) or damaged "
                        "since; restart the run (delete the packed folder if it is damaged)")
                arrays[key] = array.view(np.ndarray)  # plain views: np.memmap's __getitem__ costs more than a slice
            self._arrays = arrays
        return self._arrays

    def read(self, name: str) -> PackedClip:
        """Sample ``name``'s frames as views of the maps (indexing them reads only the frames asked
        for). Re-raises, with its type and message, the error found at packing."""
        if name in self.errors:
            reason, message = self.errors[name]
            raise ERROR_TYPES[reason](message)
        if name not in self.samples:
            raise KeyError(f"{self.array_paths['nodes']}: sample {name!r} is not in the packed index")
        offset, length, corner_x, corner_y, scale = self.samples[name]
        rows = slice(offset, offset + length)
        arrays = self.arrays()
        return PackedClip(arrays["nodes"][rows], arrays["extremes"][rows], (corner_x, corner_y), scale)
