"""Readers and writers for the on-disk formats real users have.

- Uni-Sign / GFSLT-VLP label files: gzip pickle ``{key: {name, gloss, text, ...}}``.
- Uni-Sign pose pickles: ``{"keypoints": (T, P, 133, 2) in [0, 1], "scores": (T, P, 133)}``.
- Progressive Transformers (PT) ``{split}.{skels,gloss,text,files}``: line-aligned; a ``.skels``
  line is one sequence of T x 151 floats (50 joints x xyz, then the counter i/T).

Pickles come from the internet, so they are read with ``SafeUnpickler``, which only admits
numpy arrays, numpy scalars/dtypes and builtin containers; anything else raises
``UnsafePickleError`` before a single callable is invoked.
"""
from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from datamodules.keypoints import NUM_COCO_KEYPOINTS, PT_NUM_JOINTS, PT_VALUES_PER_FRAME

PathLike = str | Path

# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------

# Every global a pickle of numpy arrays / builtin containers needs, and nothing that can run code.
_SAFE_GLOBALS = {
    ("builtins", name) for name in
    ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
     "complex", "bool", "slice")
} | {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol <= 2 stores bytes as _codecs.encode(str, "latin1")
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
# numpy 1.x pickles say numpy.core, numpy 2.x pickles say numpy._core; admit both spellings.
for _core in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS |= {
        (f"{_core}.multiarray", "_reconstruct"),  # ndarray.__reduce__
        (f"{_core}.multiarray", "scalar"),  # numpy scalars (np.float32(1.0), ...)
        (f"{_core}.numeric", "_frombuffer"),  # ndarray.__reduce_ex__ with protocol 5
    }


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle refers to a global outside the numpy/builtin allow-list."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (numpy arrays, dtypes, containers)."""

    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # numpy dtype classes (numpy.dtypes.Float32DType) appear in some numpy 2 pickles.
        if (module, name) in _SAFE_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: refusing to unpickle global '{module}.{name}'; only numpy arrays, "
            "numpy scalars/dtypes and builtin containers are allowed in data pickles")


def load_pickle(path: PathLike) -> Any:
    """Load a (optionally gzip-compressed) pickle with ``SafeUnpickler``.

    Raises FileNotFoundError for a missing file, UnsafePickleError for a disallowed global and
    ValueError (naming the file) for a truncated or corrupt one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":  # gzip magic number
            raw = gzip.decompress(raw)
        return SafeUnpickler(io.BytesIO(raw), str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # truncated gzip, EOFError, garbage opcodes, ...
        raise ValueError(f"{path}: corrupt pickle ({type(err).__name__}: {err})") from err


# --------------------------------------------------------------------------------------------
# Uni-Sign / GFSLT-VLP labels
# --------------------------------------------------------------------------------------------


def read_unisign_labels(path: PathLike) -> dict[str, dict]:
    """Read a label file: CSL-Daily (Uni-Sign) or PHOENIX-2014T (GFSLT-VLP) schema.

    Returns ``{key: {"name": str, "gloss": list[str], "text": str, "video_path": str | None,
    "length": int | None}}`` in file order. CSL-Daily glosses are already lists; GFSLT-VLP
    glosses are space-separated strings and are split; an empty gloss becomes ``[]``.
    """
    data = load_pickle(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of samples, got {type(data).__name__}")
    labels = {}
    for key, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: sample {key!r} is a {type(entry).__name__}, expected a dict")
        text = entry.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{path}: sample {key!r} has no 'text' string")
        gloss = entry.get("gloss", [])
        if isinstance(gloss, str):
            gloss = gloss.split()
        elif isinstance(gloss, (list, tuple)) and all(isinstance(g, str) for g in gloss):
            gloss = list(gloss)
        else:
            raise ValueError(f"{path}: sample {key!r} has a 'gloss' that is neither a string "
                             "nor a list of strings")
        length = entry.get("length")
        if length is not None:
            try:
                length = int(length)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: sample {key!r} has a 'length' that is not a frame count: "
                                 f"{length!r}") from None
        labels[str(key)] = {
            "name": str(entry.get("name", key)),
            "gloss": gloss,
            "text": text,
            "video_path": entry.get("video_path"),
            "length": length,
        }
    return labels


# --------------------------------------------------------------------------------------------
# Uni-Sign pose pickles
# --------------------------------------------------------------------------------------------


def _person0(array: Any, per_frame_ndim: int, key: str) -> np.ndarray:
    """Stack per-frame arrays and keep person 0: (T, [P,] *S) -> (T, *S)."""
    if isinstance(array, (list, tuple)):  # per-frame list; person counts may differ by frame
        frames = [np.asarray(f) for f in array]
        for t, f in enumerate(frames):
            if f.ndim == per_frame_ndim + 1 and len(f) == 0:
                raise ValueError(f"'{key}' frame {t} holds no person")
        frames = [f[0] if f.ndim == per_frame_ndim + 1 else f for f in frames]
        if not frames or any(f.ndim != per_frame_ndim for f in frames):
            raise ValueError(f"'{key}' frames have inconsistent shapes or are empty")
        array = np.stack(frames)
    array = np.asarray(array)
    if array.ndim == per_frame_ndim + 2:  # (T, P, ...): Uni-Sign uses person 0
        if array.shape[1] == 0:
            raise ValueError(f"'{key}' has shape {array.shape}: no person")
        array = array[:, 0]
    if array.ndim != per_frame_ndim + 1:
        raise ValueError(f"'{key}' has shape {array.shape}, expected (T, [P,] "
                         f"{'133, 2' if per_frame_ndim == 2 else '133'})")
    return array


def _frame_window(data: dict) -> slice:
    """The ``[start, end)`` frames the optional integer ``start``/``end`` keys select."""
    bounds = [data.get(key) for key in ("start", "end")]
    for key, bound in zip(("start", "end"), bounds):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, np.integer))):
            raise ValueError(f"'{key}' must be an integer frame index, got {bound!r}")
    return slice(*bounds)


def read_pose_pickle(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a Uni-Sign pose pickle: ``(keypoints (T, 133, 2), scores (T, 133))``, float32.

    Accepts keypoints shaped (T, 133, 2), (T, 1, 133, 2) or (T, P, 133, 2) (person 0 is used),
    or a per-frame list of those; scores likewise without the last axis. Optional integer
    ``start``/``end`` keys select the frames ``[start, end)``. Raises ValueError naming the file
    for a wrong structure (numpy's own errors on odd contents included), a frame without a
    person, an empty sequence or non-finite values.
    """
    data = load_pickle(path)
    try:
        return _pose_arrays(data)
    except (IndexError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err


def _pose_arrays(data: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, dict) or "keypoints" not in data or "scores" not in data:
        raise ValueError("expected a dict with 'keypoints' and 'scores'")
    keypoints = _person0(data["keypoints"], 2, "keypoints")
    scores = _person0(data["scores"], 1, "scores")
    if keypoints.shape[1:] != (NUM_COCO_KEYPOINTS, 2) or scores.shape[1:] != (NUM_COCO_KEYPOINTS,):
        raise ValueError(f"keypoints {keypoints.shape} / scores {scores.shape} are not "
                         f"(T, {NUM_COCO_KEYPOINTS}, 2) / (T, {NUM_COCO_KEYPOINTS})")
    if len(keypoints) != len(scores):
        raise ValueError(f"{len(keypoints)} keypoint frames but {len(scores)} score frames")
    if "start" in data or "end" in data:
        window = _frame_window(data)
        keypoints, scores = keypoints[window], scores[window]
    if len(keypoints) == 0:
        raise ValueError("empty pose sequence (0 frames)")
    keypoints = keypoints.astype(np.float32)
    scores = scores.astype(np.float32)
    if not (np.isfinite(keypoints).all() and np.isfinite(scores).all()):
        raise ValueError("NaN or infinite keypoint coordinates or scores")
    return keypoints, scores


# --------------------------------------------------------------------------------------------
# Progressive Transformers .skels and siblings
# --------------------------------------------------------------------------------------------

PT_SUFFIXES = ("skels", "gloss", "text", "files")


def parse_skels_line(line: str, where: str) -> np.ndarray:
    """One ``.skels`` line -> (T, 50, 3) float32, dropping the counter column.

    ``where`` (e.g. "dev.skels line 3 (dev/name)") prefixes every error message.
    """
    try:
        values = np.array(line.split(), dtype=np.float32)
    except ValueError as err:
        raise ValueError(f"{where}: non-numeric value ({err})") from err
    if values.size == 0:
        raise ValueError(f"{where}: empty sequence")
    if values.size % PT_VALUES_PER_FRAME:
        raise ValueError(f"{where}: {values.size} values is not a multiple of "
                         f"{PT_VALUES_PER_FRAME} (50 joints x xyz + counter)")
    if not np.isfinite(values).all():
        raise ValueError(f"{where}: NaN or infinite joint coordinates")
    frames = values.reshape(-1, PT_VALUES_PER_FRAME)  # (T, 151)
    return frames[:, :-1].reshape(-1, PT_NUM_JOINTS, 3)  # (T, 50, 3)


def read_skels(path: PathLike) -> list[np.ndarray]:
    """Read a ``.skels`` file: one (T, 50, 3) float32 array per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open() as f:
        return [parse_skels_line(line, f"{path} line {i + 1}") for i, line in enumerate(f)]


def write_skels(path: PathLike, seqs: Sequence[np.ndarray]) -> None:
    """Write (T, 50, 3) sequences to a ``.skels`` file, appending PT's counter i/T per frame."""
    path = Path(path)
    with path.open("w") as f:
        for k, seq in enumerate(seqs):
            seq = np.asarray(seq, dtype=np.float64)
            if seq.ndim != 3 or seq.shape[1:] != (PT_NUM_JOINTS, 3) or len(seq) == 0:
                raise ValueError(f"{path}: sequence {k} has shape {seq.shape}, expected "
                                 f"(T>0, {PT_NUM_JOINTS}, 3)")
            counter = np.arange(len(seq)) / len(seq)  # PT's timing channel: i/T, i = 0..T-1
            row = np.concatenate([seq.reshape(len(seq), -1), counter[:, None]], axis=1)
            np.savetxt(f, row.reshape(1, -1), fmt="%.7g")  # float32 precision, one line


def _read_lines(path: Path) -> list[str]:
    # file iteration, not str.splitlines, which would also split on \u2028 etc. inside text
    with path.open() as f:
        return [line.rstrip("\n") for line in f]


def read_pt_split(pt_dir: PathLike, split: str, on_bad_sample: str = "raise",
                  ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Read ``{split}.{skels,gloss,text,files}`` from ``pt_dir``.

    Returns ``(samples, skipped)``: samples are ``{"name", "gloss": list[str], "text",
    "poses": (T, 50, 3) float32}``; ``skipped`` lists ``(name, reason)`` for lines dropped
    when ``on_bad_sample="skip"``. Missing files and line counts that disagree across the four
    files always raise; a bad ``.skels`` line raises unless skipping.
    """
    if on_bad_sample not in ("raise", "skip"):
        raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
    paths = {suffix: Path(pt_dir) / f"{split}.{suffix}" for suffix in PT_SUFFIXES}
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: file not found (PT layout needs "
                                    f"{split}.{{{','.join(PT_SUFFIXES)}}})")
    lines = {s: _read_lines(paths[s]) for s in ("gloss", "text", "files")}
    with paths["skels"].open() as f:  # count first: PHOENIX's train.skels is ~1 GB of text
        counts = {s: len(v) for s, v in lines.items()} | {"skels": sum(1 for _ in f)}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{paths[s].name}: {n}" for s, n in counts.items())
        raise ValueError(f"{pt_dir}: line counts disagree ({detail})")
    samples, skipped = [], []
    with paths["skels"].open() as f:
        for i, (name, gloss, text, skel) in enumerate(zip(lines["files"], lines["gloss"],
                                                          lines["text"], f)):
            try:
                poses = parse_skels_line(skel, f"{paths['skels']} line {i + 1} (sample {name!r})")
            except ValueError as err:
                if on_bad_sample == "raise":
                    raise
                skipped.append((name, str(err)))
                continue
            samples.append({"name": name, "gloss": gloss.split(), "text": text.strip(),
                            "poses": poses})
    return samples, skipped
