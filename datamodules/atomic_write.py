"""Files that are never half-written: a temporary file in the same folder, fsync, rename over the
target (atomic on POSIX), then an fsync of the folder so the rename itself survives a power cut.
A kill at any moment leaves the old file or the new one, plus at most a stray `.tmp` file."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new contents into; they replace `path` when the block ends
    without an exception, and are discarded otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder (rename is atomic only within a file system); "xb" keeps
    # the user's umask, unlike mkstemp's 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """`path` holding `data`, written through `atomic_output`."""
    with atomic_output(path) as f:
        f.write(data)
    return Path(path)
