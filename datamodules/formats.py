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

import _compat_pickle
import builtins
import codecs
import collections
import gzip
import io
import math
import pickle
import reprlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from datamodules.keypoints import NUM_COCO_KEYPOINTS, PT_NUM_JOINTS, PT_VALUES_PER_FRAME

PathLike = str | Path

# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------

# Pickles are untrusted. The unpickler below admits a handful of globals, each wrapped so that it
# can only build inert data:
# - numpy dtypes of plain numbers only (bool, int, uint, float, complex: no void, object, string or
#   structured dtype, whose forged state turns raw bytes into pointers), always a private copy;
# - arrays only through ``_reconstruct`` / ``_frombuffer`` (``numpy.ndarray`` itself is not callable:
#   its constructor takes a shape and strides, a zero-stride array declaring 1e12 elements);
# - BUILD (``__setstate__``) only on those arrays and dtypes, with their state checked first;
# - every allocation a global makes is charged against ``MAX_UNPICKLED_BYTES`` before it happens, so
#   a small file cannot declare a huge array or repeat one memoised object into gigabytes.
MAX_UNPICKLED_BYTES = 1 << 30  # per file: 1 GiB, ~1.2M frames of 133 (x, y, score) float32 keypoints
NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex
_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "complex", "bool", "slice"}
_NUMPY_CORE = ("numpy.core", "numpy._core")  # numpy 1.x pickles say numpy.core, numpy 2.x numpy._core


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle that asks for something outside the numpy/builtin allow-list (it could run code,
    crash the process or exhaust memory). A ValueError too: it is one more corrupt input."""


def is_numeric_dtype(dtype: Any) -> bool:
    """A dtype of plain numbers: no fields, sub-arrays, objects or flexible (void, string) items."""
    return (isinstance(dtype, np.dtype) and dtype.kind in NUMERIC_KINDS and dtype.fields is None
            and dtype.subdtype is None and not dtype.hasobject and dtype.itemsize > 0)


class SafeUnpickler(pickle._Unpickler):
    """Unpickler that resolves only allow-listed globals, each wrapped to build inert data only.

    The pure-Python unpickler, because BUILD must be intercepted (the C one cannot be changed);
    it is iterative, so deep nesting cannot overflow the C stack.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file)
        self.source = source
        self.budget = MAX_UNPICKLED_BYTES
        self.buildable: set[int] = set()  # ids of the arrays / dtypes this unpickler made, not yet BUILT
        self.made: list = []  # keeps those objects alive, so their ids stay theirs

    # -- refusal and the allocation budget

    def _refuse(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(f"{self.source}: refusing to unpickle {what}; only numpy arrays of plain "
                                 "numbers, numpy scalars and builtin containers are allowed in data pickles")

    def _charge(self, nbytes: int, what: str) -> None:
        self.budget -= nbytes
        if self.budget < 0:
            raise self._refuse(f"{what}: the file asks for more than {MAX_UNPICKLED_BYTES} bytes in all")

    def _mine(self, obj: Any) -> Any:
        self.buildable.add(id(obj))
        self.made.append(obj)
        return obj

    def _dtype_of(self, value: Any) -> np.dtype:
        if not is_numeric_dtype(value):
            raise self._refuse(f"dtype {value!r}")
        return value

    def _shape(self, shape: Any, itemsize: int, what: str) -> tuple[int, ...]:
        if not (isinstance(shape, tuple) and len(shape) <= 32
                and all(type(n) is int and n >= 0 for n in shape)):
            raise self._refuse(f"{what} with shape {reprlib.repr(shape)}")
        self._charge(math.prod(shape) * itemsize, f"{what} of shape {shape}")
        return shape

    # -- the allowed globals

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif self.proto < 3:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module == "builtins" and name in _BUILTINS:
            return self._call(getattr(builtins, name))
        if (module, name) in {("builtins", "bytes"), ("builtins", "bytearray")}:
            return self._bytes(getattr(builtins, name))
        if (module, name) == ("collections", "OrderedDict"):
            return self._call(collections.OrderedDict)
        if (module, name) == ("_codecs", "encode"):  # protocol <= 2 stores bytes as encode(str, "latin1")
            return self._latin1
        if (module, name) == ("numpy", "dtype"):
            return self._dtype
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY  # only as _reconstruct's first argument
        if module in {f"{core}.multiarray" for core in _NUMPY_CORE} and name in ("_reconstruct", "scalar"):
            return self._reconstruct if name == "_reconstruct" else self._scalar
        if module in {f"{core}.numeric" for core in _NUMPY_CORE} and name == "_frombuffer":
            return self._frombuffer
        raise self._refuse(f"global '{module}.{name}'")

    def _call(self, func: Callable) -> Callable:
        def call(*args: Any) -> Any:
            # containers copy their argument: charge a generous 8 bytes per element up front
            self._charge(sum(8 * len(a) if hasattr(a, "__len__") else 64 for a in args), func.__name__)
            return func(*args)
        return call

    def _bytes(self, func: Callable) -> Callable:
        def call(*args: Any) -> Any:
            if args and not isinstance(args[0], (bytes, bytearray, str, list, tuple)):
                raise self._refuse(f"{func.__name__}({reprlib.repr(args[0])}) (a size, not data)")
            self._charge(sum(len(a) if hasattr(a, "__len__") else 64 for a in args), func.__name__)
            return func(*args)
        return call

    def _latin1(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise self._refuse(f"_codecs.encode with encoding {reprlib.repr(encoding)}")
        self._charge(len(text), "bytes")
        return text.encode("latin1")

    def _dtype(self, spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
        if not isinstance(spec, str) or len(spec) > 8:
            raise self._refuse(f"dtype {reprlib.repr(spec)}")
        # always a private copy: BUILD on numpy's shared float32 dtype would change it process-wide
        return self._mine(self._dtype_of(np.dtype(spec, bool(align), True)))

    def _reconstruct(self, subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
        if subtype is not _NDARRAY or not isinstance(typecode, (bytes, str)) or len(typecode) > 8:
            raise self._refuse("an array other than a plain numpy.ndarray")
        dtype = self._dtype_of(np.dtype(typecode))
        return self._mine(_numpy_reconstruct(np.ndarray, self._shape(shape, dtype.itemsize, "array"), typecode))

    def _frombuffer(self, buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        dtype = self._dtype_of(dtype)
        if not isinstance(buffer, (bytes, bytearray)) or order not in ("C", "F"):
            raise self._refuse("an out-of-band or malformed protocol-5 array buffer")
        if math.prod(self._shape(shape, dtype.itemsize, "array")) * dtype.itemsize != len(buffer):
            raise self._refuse(f"an array of shape {shape} over a buffer of {len(buffer)} bytes")
        return _numpy_frombuffer(buffer, dtype, shape, order)

    def _scalar(self, dtype: Any, data: Any = None) -> np.generic:
        dtype = self._dtype_of(dtype)
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise self._refuse(f"a numpy {dtype} scalar from {reprlib.repr(data)}")
        return _numpy_scalar(dtype, data)

    # -- BUILD: only the __setstate__ of an array or dtype made above, once, with a checked state

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if id(inst) not in self.buildable:
            raise self._refuse(f"BUILD on a {type(inst).__name__}")
        self.buildable.discard(id(inst))
        if isinstance(inst, np.dtype):
            # (3, byte order, subarray, names, fields, elsize, alignment, flags): a plain number's
            # state sets the byte order and nothing else
            if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
                    and state[1] in ("<", ">", "=", "|") and state[2:5] == (None, None, None)
                    and state[5:] == (-1, -1, 0) and (state[1] != "|" or inst.itemsize == 1)):
                raise self._refuse(f"dtype state {reprlib.repr(state)}")
        else:
            # (1, shape, dtype, fortran order, raw bytes), the bytes exactly the shape's size
            if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1
                    and isinstance(state[3], bool) and isinstance(state[4], (bytes, bytearray))):
                raise self._refuse(f"array state {reprlib.repr(state)}")
            dtype = self._dtype_of(state[2])
            shape = self._shape(state[1], dtype.itemsize, "array")
            if math.prod(shape) * dtype.itemsize != len(state[4]):
                raise self._refuse(f"an array of shape {shape} {dtype} from {len(state[4])} bytes")
        inst.__setstate__(state)

    dispatch[pickle.BUILD[0]] = load_build


class _NdarrayToken:
    """What the allow-list returns for ``numpy.ndarray``: accepted by ``_reconstruct``, never callable."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayToken()
_numpy_reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
_numpy_scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
_numpy_frombuffer = np._core.numeric._frombuffer if hasattr(np, "_core") else np.core.numeric._frombuffer


def load_pickle(path: PathLike) -> Any:
    """Load a (optionally gzip-compressed) pickle with ``SafeUnpickler``.

    Raises FileNotFoundError for a missing file, UnsafePickleError for a disallowed global, BUILD or
    allocation, and ValueError naming the file for anything else wrong with it (truncated, corrupt,
    a gzip stream that inflates past ``MAX_UNPICKLED_BYTES``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_UNPICKLED_BYTES + 1)
            if raw[:2] == b"\x1f\x8b":  # gzip magic number; inflated in bounded reads (a zip bomb stops at the cap)
                raw = gzip.GzipFile(fileobj=io.BytesIO(raw)).read(MAX_UNPICKLED_BYTES + 1)
        if len(raw) > MAX_UNPICKLED_BYTES:
            raise UnsafePickleError(f"{path}: more than {MAX_UNPICKLED_BYTES} bytes of pickle")
        return SafeUnpickler(io.BytesIO(raw), str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # truncated gzip, EOFError, garbage opcodes, a wrapped global's own errors, ...
        raise ValueError(f"{path}: corrupt pickle ({type(err).__name__}: {_short(err)})") from err


def _short(value: Any) -> str:
    """A bounded description of untrusted data for an error message (reprlib stops at depth 6, so a
    200,000-deep nesting cannot recurse through repr)."""
    return reprlib.repr(value) if not isinstance(value, BaseException) else str(value)[:300]


# --------------------------------------------------------------------------------------------
# Uni-Sign / GFSLT-VLP labels
# --------------------------------------------------------------------------------------------


def read_unisign_labels(path: PathLike, bad: list[tuple[str, str]] | None = None) -> dict[str, dict]:
    """Read a label file: CSL-Daily (Uni-Sign) or PHOENIX-2014T (GFSLT-VLP) schema.

    Returns ``{key: {"name": str, "gloss": list[str], "text": str, "video_path": str | None,
    "length": int | None}}`` in file order. CSL-Daily glosses are already lists; GFSLT-VLP
    glosses are space-separated strings and are split; an empty gloss becomes ``[]``.
    A malformed entry (no text, a field of the wrong type) raises ValueError naming the file and
    key, or, when ``bad`` is a list, is left out and appended to it as ``(name, message)``.
    A file that is not a dict of samples always raises.
    """
    return unisign_labels(load_pickle(path), path, bad)


def unisign_labels(data: Any, source: PathLike, bad: list[tuple[str, str]] | None = None) -> dict[str, dict]:
    """``read_unisign_labels`` on a label dict already loaded from ``source`` (named in errors)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a dict of samples, got {type(data).__name__}")
    labels = {}
    for key, entry in data.items():
        if not isinstance(key, (str, int)):
            raise ValueError(f"{source}: sample key {_short(key)} is not a string")
        try:
            labels[str(key)] = _label(entry, key)
        except ValueError as err:
            message = f"{source}: sample {str(key)!r} {err}"
            if bad is None:
                raise ValueError(message) from None
            bad.append((str(key), message))
    return labels


def _label(entry: Any, key: str | int) -> dict:
    """One label entry, checked field by field (each error message starts with what is wrong)."""
    if not isinstance(entry, dict):
        raise ValueError(f"is a {type(entry).__name__}, expected a dict")
    text = entry.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("has no 'text' string" if not isinstance(text, str) else "has an empty 'text'")
    gloss = entry.get("gloss", [])
    if isinstance(gloss, str):
        gloss = gloss.split()
    elif isinstance(gloss, (list, tuple)) and all(isinstance(g, str) for g in gloss):
        gloss = list(gloss)
    else:
        raise ValueError("has a 'gloss' that is neither a string nor a list of strings")
    length = entry.get("length")
    if length is not None:
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"has a 'length' that is not a frame count: {_short(length)}")
        length = int(length)
    name, video_path = entry.get("name", key), entry.get("video_path")
    if not isinstance(name, (str, int)):
        raise ValueError(f"has a 'name' that is not a string: {_short(name)}")
    if video_path is not None and not isinstance(video_path, str):
        raise ValueError(f"has a 'video_path' that is not a string: {_short(video_path)}")
    return {"name": str(name), "gloss": gloss, "text": text, "video_path": video_path, "length": length}


# --------------------------------------------------------------------------------------------
# Uni-Sign pose pickles
# --------------------------------------------------------------------------------------------

MAX_POSE_VALUES = 1 << 27  # per array: 134M numbers, ~500k frames of 133 keypoints (x, y)


def _declared_values(value: Any) -> int:
    """How many numbers ``np.asarray(value)`` would hold, counted without allocating, capped at
    ``MAX_POSE_VALUES + 1``. A list holding one memoised sub-list a million times counts it a million
    times (asarray would copy it so), yet each distinct list is visited once, so counting costs what
    the pickle holds; a list that contains itself counts as too many. Iterative, no recursion."""
    over = MAX_POSE_VALUES + 1
    sizes: dict[int, int] = {}  # id of a list or tuple -> its count
    open_lists: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, children_done = stack.pop()
        if not isinstance(item, (list, tuple)) or (id(item) in sizes and not children_done):
            continue
        if not children_done:
            if id(item) in open_lists:
                return over  # a cycle
            open_lists.add(id(item))
            stack.append((item, True))
            stack.extend((child, False) for child in item)
            continue
        open_lists.discard(id(item))
        total = sum(sizes[id(c)] if isinstance(c, (list, tuple)) else c.size if isinstance(c, np.ndarray) else 1
                    for c in item)
        sizes[id(item)] = min(max(total, 1), over)
    if isinstance(value, (list, tuple)):
        return sizes[id(value)]
    return value.size if isinstance(value, np.ndarray) else 1


def _person0(array: Any, per_frame_ndim: int, key: str) -> np.ndarray:
    """Stack per-frame arrays and keep person 0: (T, [P,] *S) -> (T, *S)."""
    if _declared_values(array) > MAX_POSE_VALUES:
        raise ValueError(f"'{key}' holds more than {MAX_POSE_VALUES} values")
    if isinstance(array, (list, tuple)):  # per-frame list; person counts may differ by frame
        frames = [_numeric(f, key) for f in array]
        for t, f in enumerate(frames):
            if f.ndim == per_frame_ndim + 1 and len(f) == 0:
                raise ValueError(f"'{key}' frame {t} holds no person")
        frames = [f[0] if f.ndim == per_frame_ndim + 1 else f for f in frames]
        if not frames or any(f.ndim != per_frame_ndim for f in frames):
            raise ValueError(f"'{key}' frames have inconsistent shapes or are empty")
        array = np.stack(frames)
    array = _numeric(array, key)
    if array.ndim == per_frame_ndim + 2:  # (T, P, ...): Uni-Sign uses person 0
        if array.shape[1] == 0:
            raise ValueError(f"'{key}' has shape {array.shape}: no person")
        array = array[:, 0]
    if array.ndim != per_frame_ndim + 1:
        raise ValueError(f"'{key}' has shape {array.shape}, expected (T, [P,] "
                         f"{'133, 2' if per_frame_ndim == 2 else '133'})")
    return array


def _numeric(value: Any, key: str) -> np.ndarray:
    """``value`` as an array of plain numbers (Python numbers that no float holds, e.g. 10**400,
    and strings or dicts are errors here, not numpy object arrays)."""
    array = np.asarray(value) if isinstance(value, np.ndarray) else np.asarray(value, dtype=np.float64)
    if not is_numeric_dtype(array.dtype):
        raise ValueError(f"'{key}' holds {array.dtype} values, not numbers")
    return array


def _frame_window(data: dict) -> slice:
    """The ``[start, end)`` frames the optional integer ``start``/``end`` keys select."""
    bounds = [data.get(key) for key in ("start", "end")]
    for key, bound in zip(("start", "end"), bounds):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, np.integer))):
            raise ValueError(f"'{key}' must be an integer frame index, got {_short(bound)}")
    return slice(*bounds)


def read_poses(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A clip's ``(keypoints (T, 133, 2), scores (T, 133))`` from a Uni-Sign pose pickle, or from a
    pose-format ``.pose`` file (``datamodules.pose_format_io``, COCO-WholeBody or MediaPipe Holistic)."""
    if Path(path).suffix == ".pose":
        from datamodules.pose_format_io import read_pose_format  # pose-format is an optional extra

        return read_pose_format(path)
    return read_pose_pickle(path)


def read_pose_pickle(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a Uni-Sign pose pickle: ``(keypoints (T, 133, 2), scores (T, 133))``, float32.

    Accepts keypoints shaped (T, 133, 2), (T, 1, 133, 2) or (T, P, 133, 2) (person 0 is used),
    or a per-frame list of those; scores likewise without the last axis. Optional integer
    ``start``/``end`` keys select the frames ``[start, end)``. Every problem with the file raises
    ValueError naming it (UnsafePickleError, a ValueError too, for a refused pickle): a wrong
    structure or type, a frame without a person, an empty sequence, non-finite or out-of-range
    values, more than ``MAX_POSE_VALUES`` values, and whatever numpy or Python raise on odd
    contents (OverflowError, RecursionError, MemoryError, TypeError, ...).
    """
    data = load_pickle(path)
    try:
        return _pose_arrays(data)
    except Exception as err:  # one error type for every way a sample can be bad: on_bad_sample handles it
        raise ValueError(f"{path}: {type(err).__name__ + ': ' if not isinstance(err, ValueError) else ''}"
                         f"{_short(err)}") from err


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
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: reported below
        keypoints = keypoints.astype(np.float32)
        scores = scores.astype(np.float32)
    if not (np.isfinite(keypoints).all() and np.isfinite(scores).all()):
        raise ValueError("NaN or infinite keypoint coordinates or scores (or values beyond float32)")
    return keypoints, scores


# --------------------------------------------------------------------------------------------
# Progressive Transformers .skels and siblings
# --------------------------------------------------------------------------------------------

PT_SUFFIXES = ("skels", "gloss", "text", "files")
# PT's counter column is i/T; its public sample data rounds it to 4 decimals (off by <= 5e-5). A
# dropped or added value shifts a joint coordinate into that column, which this catches.
PT_COUNTER_TOLERANCE = 5e-4


def parse_skels_line(line: str, where: str) -> np.ndarray:
    """One ``.skels`` line -> (T, 50, 3) float32, dropping the counter column after checking it.

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
    counter = frames[:, -1].astype(np.float64)
    off = np.abs(counter - np.arange(len(frames)) / len(frames))
    if off.max() > PT_COUNTER_TOLERANCE or (np.diff(counter) < 0).any():
        t = int(off.argmax()) if off.max() > PT_COUNTER_TOLERANCE else int(np.argmax(np.diff(counter) < 0)) + 1
        raise ValueError(f"{where}: the counter column (every {PT_VALUES_PER_FRAME}th value) is not i/T: "
                         f"frame {t} of {len(frames)} has {counter[t]:.6g}, expected {t / len(frames):.6g} "
                         "(a value dropped or added shifts the columns)")
    return frames[:, :-1].reshape(-1, PT_NUM_JOINTS, 3)  # (T, 50, 3)


def _text_lines(path: Path) -> Iterator[tuple[int, str | ValueError]]:
    """(line number, text) of a UTF-8 text file, whatever the locale; a leading byte-order mark is
    dropped; a line that is not UTF-8 gives a ValueError naming the file and line instead of its
    text. Lines end at "\\n" only (str.splitlines would also split on "\\u2028" inside text)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                yield number, ValueError(f"{path} line {number}: not UTF-8 ({err.reason} at byte {err.start})")


def read_skels(path: PathLike) -> list[np.ndarray]:
    """Read a ``.skels`` file: one (T, 50, 3) float32 array per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    sequences = []
    for number, line in _text_lines(path):
        if isinstance(line, ValueError):
            raise line
        sequences.append(parse_skels_line(line, f"{path} line {number}"))
    return sequences


def write_skels(path: PathLike, seqs: Sequence[np.ndarray]) -> None:
    """Write (T, 50, 3) sequences to a ``.skels`` file, appending PT's counter i/T per frame."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for k, seq in enumerate(seqs):
            seq = np.asarray(seq, dtype=np.float64)
            if seq.ndim != 3 or seq.shape[1:] != (PT_NUM_JOINTS, 3) or len(seq) == 0:
                raise ValueError(f"{path}: sequence {k} has shape {seq.shape}, expected "
                                 f"(T>0, {PT_NUM_JOINTS}, 3)")
            counter = np.arange(len(seq)) / len(seq)  # PT's timing channel: i/T, i = 0..T-1
            row = np.concatenate([seq.reshape(len(seq), -1), counter[:, None]], axis=1)
            np.savetxt(f, row.reshape(1, -1), fmt="%.7g")  # float32 precision, one line


def pt_split_paths(pt_dir: PathLike, split: str) -> dict[str, Path]:
    """``{suffix: pt_dir/<split>.<suffix>}`` for the four line-aligned PT files of a split."""
    return {suffix: Path(pt_dir) / f"{split}.{suffix}" for suffix in PT_SUFFIXES}


def read_pt_split(pt_dir: PathLike, split: str, on_bad_sample: str = "raise",
                  ) -> tuple[list[dict], list[tuple[str, str]]]:
    """Read ``{split}.{skels,gloss,text,files}`` from ``pt_dir`` (UTF-8, a byte-order mark allowed).

    Returns ``(samples, skipped)``: samples are ``{"name", "gloss": list[str], "text",
    "poses": (T, 50, 3) float32}``; ``skipped`` lists ``(name, reason)`` for lines dropped
    when ``on_bad_sample="skip"``. Missing files and line counts that disagree across the four
    files always raise; a bad sample raises (naming file, line and sample) unless skipping: a
    malformed ``.skels`` line, a line of any of the four files that is not UTF-8, an empty gloss
    or text line, an empty name. A row blank in all four files is not a sample (PT skips it);
    names and texts lose surrounding whitespace.
    """
    if on_bad_sample not in ("raise", "skip"):
        raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
    paths = pt_split_paths(pt_dir, split)
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"{p}: file not found (PT layout needs "
                                    f"{split}.{{{','.join(PT_SUFFIXES)}}})")
    lines = {s: [line for _, line in _text_lines(paths[s])] for s in ("gloss", "text", "files")}
    with paths["skels"].open("rb") as f:  # count first: PHOENIX's train.skels is ~1 GB of text
        counts = {s: len(v) for s, v in lines.items()} | {"skels": sum(1 for _ in f)}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{paths[s].name}: {n}" for s, n in counts.items())
        raise ValueError(f"{pt_dir}: line counts disagree ({detail})")
    samples, skipped = [], []
    for (number, skel), name, gloss, text in zip(_text_lines(paths["skels"]), lines["files"], lines["gloss"],
                                                 lines["text"]):
        if all(isinstance(value, str) and not value.strip() for value in (name, gloss, text, skel)):
            continue  # a blank row (e.g. a trailing empty line in all four files) is no sample, as in PT's loader
        try:
            for value in (name, gloss, text, skel):
                if isinstance(value, ValueError):
                    raise value
            for suffix, value in (("files", name), ("gloss", gloss), ("text", text)):
                if not value.strip():
                    raise ValueError(f"{paths[suffix]} line {number}: empty {'name' if suffix == 'files' else suffix}")
            poses = parse_skels_line(skel, f"{paths['skels']} line {number} (sample {name!r})")
        except ValueError as err:
            if on_bad_sample == "raise":
                raise
            skipped.append((name if isinstance(name, str) and name.strip() else f"{split} line {number}", str(err)))
            continue
        samples.append({"name": name.strip(), "gloss": gloss.split(), "text": text.strip(), "poses": poses})
    return samples, skipped
