"""Checkpoint files that are never half-written, and loading that names the bad file.

Lightning's `TorchCheckpointIO` writes through an fsspec transaction: a rename, but no fsync, so
after a power cut the renamed `last.ckpt` can still be empty. `AtomicCheckpointIO` writes a
temporary file in the same folder, fsyncs it, renames it over the target (atomic on POSIX) and
fsyncs the folder so the rename itself is durable. A kill at any moment leaves either the old
or the new checkpoint, plus at most a stray `.tmp` file.

Loading tries `weights_only=True` first (no arbitrary code from a checkpoint) and falls back to a
full unpickle, with a warning naming the offending type, only for checkpoints that hold other
objects (e.g. a model's hyper-parameters). A truncated or corrupt file raises
`CorruptCheckpointError` naming it.
"""
from __future__ import annotations

import logging
import os
import pickle
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger(__name__)

_WEIGHTS_ONLY_FAILURE = "Weights only load failed"  # torch's message when an unsafe global is met


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, empty, not a torch archive)."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to `path` via temp file + fsync + rename + folder fsync."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder (rename is atomic only within a file system); "xb" keeps
    # the user's umask, unlike mkstemp's 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu",
                         weights_only: bool | None = None, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint; `weights_only=None` means safe first, full unpickle only if needed.
    `mmap=True` maps tensors lazily instead of reading them (cheap peeks at metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only is not False, mmap=mmap)
    except pickle.UnpicklingError as err:
        if _WEIGHTS_ONLY_FAILURE not in str(err) or weights_only is True:
            raise CorruptCheckpointError(f"checkpoint {path} cannot be read: {err}") from err
        reason = str(err).split("\n\n")[1] if "\n\n" in str(err) else str(err)
        log.warning("checkpoint %s holds non-tensor objects (%s); loading it with weights_only=False",
                    path, reason.strip()[:200])
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err}); "
            "resume from another checkpoint in its folder") from err
    return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO with atomic, durable writes and loads that name a bad file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Callable | Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location=map_location, weights_only=weights_only)
