"""Packed pose cache: every pose pickle of a split unpickled and normalised once into memory-mapped arrays.

Layout under ``cache_dir`` (the DataModule uses ``<label_dir>/packed``), per split and build
generation ``<gen>`` (a random hex name, new with every build):

- ``<split>.<gen>.npy``: float32 (N_frames, 69, 3), the four parts' nodes (``part_nodes``: the only
  keypoints the model sees) of every frame of every sample, concatenated in label order, each
  clip normalised whole by ``normalise_clips``. That is the batch value of a clip that keeps
  all its frames, so loading it normalises nothing.
- ``<split>.<gen>.extremes.npy``: float32 (N_frames, 5), ``body_extremes`` of the same frames. Uni-Sign's
  crop box spans the sampled frames only, so a clip cut to ``max_len`` frames gets its own box
  from these and ``rebox_clips`` maps its normalised rows onto it.
- ``<split>.index.json``: ``{"version", "fingerprint", "generation", "sha256": {"nodes", "extremes"},
  "frames", "samples": {name: [offset, length, corner_x, corner_y, scale]}, "errors": {name: [reason,
  message]}}``, with the whole clip's crop box (scale 0: too few confident body points).

``fingerprint`` hashes the node list, the normalisation constants, the label file and every pose
file it refers to (inode, size, mtime_ns, ctime_ns): the kernel sets ctime on every write and no
call can set it back, so changed content always makes the cache stale (restoring a file's size and
mtime with ``touch`` does not hide it) and ``ensure_packed`` rebuilds it.
Integrity: each array's sha256 is stored at build and verified when a process opens the cache;
a mismatch, a truncated or missing array, or an array that disagrees with the index is a
``PackedCacheError`` (the DataModule never turns it into skipped samples), and ``ensure_packed``
rebuilds such a cache. A generation's files are written once and never changed: a rebuild writes
a new generation, commits it by renaming the index over the old one, then deletes the generation
it replaced, so a reader works on one generation or stops with a ``PackedCacheError`` (its files
are gone), never on a mix of two.
A pose file that is missing or whose content is bad is not an error here: its reason and
message are stored and ``PackedPoses.read`` raises the same exception type with the same message
when the sample is loaded, so ``on_bad_sample`` behaves exactly as on the pickle path. Any other
read error (permissions, I/O) may pass without the file changing, so it aborts the build instead
of being stored: nothing is committed and the DataModule reads pickles. Temporaries of builds that
were killed are removed by the next build.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch

from datamodules.formats import UnsafePickleError, read_poses
from datamodules.keypoints import (BODY_EXTREMES, MIN_VALID_BODY_POINTS, PART_NODES_COCO, PART_SLICES,
                                   SCORE_THRESHOLD, body_extremes, normalise_clips, part_nodes)

log = logging.getLogger(__name__)

FORMAT_VERSION = 4  # 1 stored all 133 COCO keypoints, 2 the raw part nodes, 3 had no generations or checksums
# a frame's row in each array: (x, y, score) per node; the body's box extremes
ARRAYS = {"nodes": (len(PART_NODES_COCO), 3), "extremes": (len(BODY_EXTREMES),)}
# Exception types a pose file can fail with, by the reason name the translation dataset uses.
ERROR_TYPES = {"missing": FileNotFoundError, "unsafe": UnsafePickleError, "invalid": ValueError}


class PackedCacheError(RuntimeError):
    """The cache is damaged or was replaced under a run. Not a bad sample: it concerns every
    sample, so ``on_bad_sample="skip"`` must not swallow it (hence not a ValueError or OSError)."""


def _stat(path: Path) -> list:
    try:
        st = path.stat()
    except FileNotFoundError:
        return [path.name, None]
    return [path.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def fingerprint(label_path: Path, pose_paths: Sequence[Path]) -> str:
    """sha256 over the format, the stored node list and the normalisation constants, then the label
    file's and each pose file's (name, inode, size, mtime_ns, ctime_ns), in order."""
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, PART_NODES_COCO.tolist(), SCORE_THRESHOLD, MIN_VALID_BODY_POINTS,
                                   _stat(Path(label_path))]).encode())
    for path in pose_paths:
        h.update(json.dumps(_stat(Path(path))).encode())
    return h.hexdigest()


def index_path(cache_dir: Path, split: str) -> Path:
    return Path(cache_dir) / f"{split}.index.json"


def array_paths(cache_dir: Path, split: str, generation: str) -> dict[str, Path]:
    """{"nodes", "extremes"} array paths of one build generation of a split."""
    cache_dir = Path(cache_dir)
    return {"nodes": cache_dir / f"{split}.{generation}.npy", "extremes": cache_dir / f"{split}.{generation}.extremes.npy"}


def paths(cache_dir: Path, split: str) -> tuple[dict[str, Path], Path]:
    """({"nodes", "extremes"} array paths of the committed generation, index path) of one split's
    cache; the array paths are {} while there is no readable index."""
    index = read_index(cache_dir, split)
    arrays = array_paths(cache_dir, split, index["generation"]) if index is not None else {}
    return arrays, index_path(cache_dir, split)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    """Read each ``(name, pose_path)`` through ``read_poses`` and write the split's cache as a
    new generation, then delete the generation it replaced. Frames stream straight to disk (a
    split never has to fit in memory). Returns the index."""
    final_index = index_path(cache_dir, split)
    final_index.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(final_index.parent, split)
    previous = read_index(cache_dir, split, check_files=False)
    generation = uuid.uuid4().hex[:16]
    final = array_paths(cache_dir, split, generation)
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = {key: path.with_name(path.name + tag) for key, path in final.items()}
    tmp_index = final_index.with_name(final_index.name + tag)
    index = {"version": FORMAT_VERSION, "fingerprint": fingerprint(label_path, [p for _, p in samples]),
             "generation": generation, "sha256": {}, "frames": 0, "samples": {}, "errors": {}}
    try:
        with ExitStack() as stack:
            files = {key: stack.enter_context(path.open("wb+")) for key, path in tmp.items()}
            for key, f in files.items():  # placeholders; rewritten with the real frame count below
                f.write(_npy_header(0, ARRAYS[key]))
            for name, pose_path in samples:
                try:
                    keypoints, scores = read_poses(pose_path)  # (T, 133, 2), (T, 133)
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
                header = _npy_header(index["frames"], ARRAYS[key])
                # numpy pads the header so the first axis can grow in place; this fires only if a numpy stops doing so
                if len(header) != len(_npy_header(0, ARRAYS[key])):
                    raise RuntimeError(f"{final[key]}: .npy header size changed with the frame count")
                f.seek(0)
                f.write(header)
                f.flush()
                index["sha256"][key] = file_sha256(tmp[key])  # read back from the page cache
        for key, path in tmp.items():
            os.replace(path, final[key])
        tmp_index.write_text(json.dumps(index))
        os.replace(tmp_index, final_index)  # the commit: readers now open this generation
    except BaseException:
        for path in final.values():  # renamed but never committed
            path.unlink(missing_ok=True)
        raise
    finally:
        for path in (*tmp.values(), tmp_index):
            path.unlink(missing_ok=True)
    if previous is not None and previous.get("generation") != generation:
        for path in array_paths(cache_dir, split, previous["generation"]).values():
            path.unlink(missing_ok=True)
    for legacy in (f"{split}.npy", f"{split}.extremes.npy"):  # format 3's names
        (Path(cache_dir) / legacy).unlink(missing_ok=True)
    _verified.add(_identity(final.values(), index))
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


def read_index(cache_dir: Path, split: str, check_files: bool = True) -> dict | None:
    """The split's index, or None when absent, unreadable, from another format version or (with
    ``check_files``) missing an array file."""
    try:
        index = json.loads(index_path(cache_dir, split).read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(index, dict) or index.get("version") != FORMAT_VERSION
            or not isinstance(index.get("generation"), str) or not index["generation"].isalnum()):
        return None
    if check_files and not all(path.is_file() for path in array_paths(cache_dir, split, index["generation"]).values()):
        return None
    return index


# (path, inode, size, mtime_ns, ctime_ns) of arrays whose checksums this process has verified: a
# process opens a cache several times (prepare_data, then setup), and hashing it once is enough.
_verified: set[tuple] = set()


def _identity(paths_: Iterable[Path], index: dict) -> tuple:
    return (index["generation"], *(tuple(_stat(path)) for path in paths_))


def verify_arrays(cache_dir: Path, split: str, index: dict) -> None:
    """Check the generation's arrays against the sha256 stored at build; PackedCacheError naming
    the file on a mismatch."""
    files = array_paths(cache_dir, split, index["generation"])
    identity = _identity(files.values(), index)
    if identity in _verified:
        return
    for key, path in files.items():
        try:
            digest = file_sha256(path)
        except OSError as err:
            raise PackedCacheError(f"{path}: cannot read the packed cache ({err})") from err
        if digest != index.get("sha256", {}).get(key):
            raise PackedCacheError(f"{path}: the packed cache fails its checksum (damaged since it was built); "
                                   f"delete {Path(cache_dir)} or rerun prepare_data to rebuild it")
    _verified.add(identity)


def ensure_packed(cache_dir: Path, split: str, label_path: Path, samples: Sequence[tuple[str, Path]]) -> bool:
    """Build the split's cache unless it is fresh for these sources and intact; True when it was (re)built."""
    try:
        if PackedPoses.open(cache_dir, split, label_path, [p for _, p in samples]) is not None:
            return False
    except PackedCacheError as err:
        log.warning("%s; rebuilding it", err)
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
        self.array_paths = array_paths(cache_dir, split, index["generation"])
        self.samples, self.errors = index["samples"], index["errors"]
        self.frames = index["frames"]
        self._arrays: dict[str, np.ndarray] | None = None

    @classmethod
    def open(cls, cache_dir: Path, split: str, label_path: Path, pose_paths: Sequence[Path]) -> PackedPoses | None:
        """The cache if it is fresh for these sources, else None; PackedCacheError if it is fresh
        but damaged (checksum)."""
        index = read_index(cache_dir, split)
        if index is None or index["fingerprint"] != fingerprint(label_path, pose_paths):
            return None
        verify_arrays(cache_dir, split, index)
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
                try:
                    array = np.load(path, mmap_mode="c")
                except Exception as err:  # gone (a rebuild replaced this generation), truncated, not an .npy
                    raise PackedCacheError(
                        f"{path}: cannot map the packed cache ({type(err).__name__}: {err}); it was rebuilt "
                        "(another job's prepare_data) or damaged since this run opened it: restart the run") from err
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
            raise PackedCacheError(f"{self.array_paths['nodes']}: sample {name!r} is not in the packed index")
        offset, length, corner_x, corner_y, scale = self.samples[name]
        rows = slice(offset, offset + length)
        arrays = self.arrays()
        return PackedClip(arrays["nodes"][rows], arrays["extremes"][rows], (corner_x, corner_y), scale)
