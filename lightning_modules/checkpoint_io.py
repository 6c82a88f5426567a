"""Checkpoints are data: never half-written, never code, and a damaged one is a named error.

Writing. Lightning's `TorchCheckpointIO` writes through an fsspec transaction: a rename, but no
fsync, so after a power cut the renamed `last.ckpt` can still be empty. `atomic_torch_save` writes
a temporary file in the same folder, appends a checksum trailer (below), fsyncs it, renames it
over the target (atomic on POSIX) and fsyncs the folder so the rename itself is durable. A kill at
any moment leaves either the old or the new checkpoint, plus at most a stray `.tmp` file. What is
saved is first reduced to plain containers (`plain_checkpoint`): hyperparameters that are a
Namespace, an AttributeDict or a Path become dicts and strings, and anything that would need
code to rebuild fails the save with its key, so every checkpoint signlab writes loads with
`weights_only=True`.

Checksum. A torch checkpoint is a zip archive, whose reader ignores bytes after its end record;
signlab appends `TRAILER_MAGIC` + the sha256 of everything before it. Every load verifies it, so
a flipped byte anywhere is `CorruptCheckpointError` naming the file. A file without the trailer
(written by plain torch / Lightning, or by signlab before 2026-12-02) loads unverified; a file
whose tail is neither the trailer nor a zip end record is corrupt.

Loading (every site: `--ckpt_path` file / last / best, the W&B id lookup, `vqvae_ckpt`,
`back_translator_ckpt`, `init_from`, caches, benchmarks) goes through `load_checkpoint_file` /
`load_lightning_module`, which use `torch.load(weights_only=True)` only: a pickle that names any
global outside torch's tensor allow-list is refused before it runs (`UnsafeCheckpointError`,
naming the file and the global). There is no silent fallback. A checkpoint of an older signlab
that really needs more can be loaded by typing the opt-in `SIGNLAB_UNSAFE_LOAD=1` (environment);
that full unpickle can run arbitrary code, so it warns naming the file, and it is never used when
the caller asked for `weights_only=True`.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, Callable

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from datamodules.atomic_write import atomic_output

log = logging.getLogger(__name__)

UNSAFE_LOAD_ENV = "SIGNLAB_UNSAFE_LOAD"
TRAILER_MAGIC = b"\nSIGNLAB-SHA256\n"  # 16 bytes, then the 32-byte digest
TRAILER_SIZE = len(TRAILER_MAGIC) + 32
_ZIP_END = b"PK\x05\x06"  # a zip archive's end-of-central-directory record: its last 22 bytes (no comment)
_ZIP_END_SIZE = 22
_WEIGHTS_ONLY_FAILURE = "Weights only load failed"  # torch's message when an unsafe global is met
# What torch's weights-only unpickler rebuilds without help (bool is an int; bytearray and Counter
# load too, but nothing signlab saves uses them).
_INERT = (int, float, complex, str, bytes, torch.Tensor, torch.Size, torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A checkpoint file that signlab will not load; the message names the file and why."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file that cannot be read (truncated, empty, not a torch archive, checksum mismatch)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle needs globals outside torch's weights-only allow-list (it could run code)."""


def unsafe_load_allowed() -> bool:
    """The user's explicit opt-in to full unpickling of old checkpoints (`SIGNLAB_UNSAFE_LOAD=1`)."""
    return os.environ.get(UNSAFE_LOAD_ENV, "") == "1"


# ------------------------------------------------------------------------------------ saving


def plain_checkpoint(obj: Any, where: str = "checkpoint") -> Any:
    """`obj` with every mapping that is not a dict / OrderedDict turned into a dict, paths into
    strings, argparse Namespaces into dicts and numpy scalars into Python numbers, so that
    `torch.load(weights_only=True)` reads it back. Unchanged parts are returned as they are (a state
    dict keeps its OrderedDict `_metadata`). Raises TypeError naming the key for anything else that is
    not inert data (it would need code to rebuild)."""
    if obj is None or isinstance(obj, _INERT):
        return obj
    if isinstance(obj, Mapping):
        out = {key: plain_checkpoint(value, f"{where}[{key!r}]") for key, value in obj.items()}
        if type(obj) in (dict, OrderedDict) and all(out[key] is value for key, value in obj.items()):
            return obj
        if type(obj) is OrderedDict:
            copied = copy.copy(obj)  # keeps its attributes (a state dict's `_metadata`)
            copied.update(out)
            return copied
        return out  # AttributeDict, defaultdict, ...: a plain dict
    if type(obj) in (list, tuple, set):
        out = [plain_checkpoint(value, f"{where}[{i}]") for i, value in enumerate(obj)]
        return obj if all(a is b for a, b in zip(out, obj)) else type(obj)(out)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, argparse.Namespace):  # jsonargparse's Namespace too
        return plain_checkpoint(vars(obj), where)
    if isinstance(obj, np.generic) and obj.dtype.kind in "biufc":
        return obj.item()
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; signlab checkpoints hold "
                    "only tensors and plain containers (dict, list, str, numbers) so that they load with "
                    "weights_only=True")


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through (no second read of a big file)."""

    def __init__(self, f) -> None:
        self.f, self.digest = f, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to `path` with a checksum trailer, through `atomic_output` (temporary file,
    fsync, rename, folder fsync)."""
    obj = plain_checkpoint(obj)
    with atomic_output(path) as f:
        writer = _HashingWriter(f)
        torch.save(obj, writer)  # torch's zip writer only appends, so the digest is of the file's bytes
        f.write(TRAILER_MAGIC + writer.digest.digest())


# ----------------------------------------------------------------------------------- loading


def _sha256(f, size: int) -> bytes:
    """sha256 of the next `size` bytes of `f`, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    while size > 0:
        chunk = f.read(min(size, 1 << 22))
        if not chunk:
            break
        digest.update(chunk)
        size -= len(chunk)
    return digest.digest()


def verify_checkpoint(path: str | os.PathLike) -> bool:
    """Check `path`'s checksum trailer; True if it had one, False for a file without one (not
    written by signlab's `atomic_torch_save`). Raises CorruptCheckpointError naming the file for a
    mismatch or a tail that is neither a trailer nor the end of a zip archive."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size >= TRAILER_SIZE:
            f.seek(size - TRAILER_SIZE)
            tail = f.read(TRAILER_SIZE)
            if tail.startswith(TRAILER_MAGIC):
                f.seek(0)
                if _sha256(f, size - TRAILER_SIZE) != tail[len(TRAILER_MAGIC):]:
                    raise CorruptCheckpointError(
                        f"checkpoint {path} fails its checksum (a changed or damaged byte); resume from "
                        "another checkpoint in its folder")
                return True
        if size >= _ZIP_END_SIZE:
            f.seek(size - _ZIP_END_SIZE)
            if f.read(4) == _ZIP_END:
                return False
    raise CorruptCheckpointError(f"checkpoint {path} is truncated or corrupt: it ends neither with signlab's "
                                 "checksum trailer nor with a zip archive's end record")


def _unsafe_global(err: Exception) -> str:
    """The part of torch's weights-only message that says what was refused."""
    text = str(err)
    for line in text.splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line or "GLOBAL" in line:
            return line.strip()[:300]
    return (text.split("\n\n")[1] if "\n\n" in text else text).strip()[:300]


def _load(path: Path, weights_only: bool | None, map_location: Any, mmap: bool) -> tuple[Any, bool]:
    """(`torch.load` of `path` after its checksum is verified, whether it loaded weights-only), every
    failure a CheckpointError naming the file. The full unpickle happens only with the user's opt-in,
    and never when the caller asked for weights_only=True."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    verify_checkpoint(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap), True
    except pickle.UnpicklingError as err:
        if _WEIGHTS_ONLY_FAILURE not in str(err):
            raise CorruptCheckpointError(f"checkpoint {path} cannot be read: {str(err)[:500]}") from err
        reason = _unsafe_global(err)
        if weights_only is True or not unsafe_load_allowed():
            raise UnsafeCheckpointError(
                f"checkpoint {path} refused: its pickle needs more than tensors and plain containers "
                f"({reason}), and loading it could run arbitrary code. If you trust the file (e.g. your "
                f"own checkpoint from an older signlab), set {UNSAFE_LOAD_ENV}=1 to load it anyway") from None
    except Exception as err:  # torch reports damage as RuntimeError, EOFError, KeyError, ...; all mean the same
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {str(err)[:500]}); "
            "resume from another checkpoint in its folder") from err
    log.warning("checkpoint %s holds non-tensor objects (%s); %s=1: unpickling it fully, which runs any "
                "code it contains", path, reason, UNSAFE_LOAD_ENV)
    try:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap), False
    except Exception as err:
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu",
                         weights_only: bool | None = None, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint as data (see the module docstring): checksum verified, weights_only=True.
    `weights_only=None/False` admit the `SIGNLAB_UNSAFE_LOAD=1` opt-in, True never does. `mmap=True`
    maps tensors lazily instead of reading them (cheap peeks at metadata). Raises FileNotFoundError,
    CorruptCheckpointError or UnsafeCheckpointError, each naming the file."""
    return _load(Path(path), weights_only, map_location, mmap)[0]


def check_checkpoint(path: str | os.PathLike) -> bool:
    """Vet a checkpoint before code that calls `torch.load` itself reads it: checksum, and a
    metadata-only (mmap) load under `load_checkpoint_file`'s rules; errors name the file. True if
    it loads weights-only, False if only the user's `SIGNLAB_UNSAFE_LOAD=1` opt-in admitted it."""
    return _load(Path(path), None, "cpu", True)[1]


def load_lightning_module(cls: type, path: str | os.PathLike, **kwargs: Any) -> Any:
    """`cls.load_from_checkpoint(path, **kwargs)` under `load_checkpoint_file`'s rules. The file is
    vetted first, so an error after that (weights that do not fit the class) is Lightning's own."""
    return cls.load_from_checkpoint(str(path), weights_only=check_checkpoint(path), **kwargs)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO with atomic, checksummed writes and weights-only loads that name a bad file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Callable | Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location=map_location, weights_only=weights_only)
