"""Hostile files for the load sites: a checkpoint whose pickle runs a command, and pickles written
opcode by opcode (what `pickle.dumps` would never produce)."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import torch


class Payload:
    """Unpickling this runs `touch <marker>`: proof of code execution if the marker appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_checkpoint(path: Path, marker: Path) -> Path:
    """A Lightning-looking checkpoint whose pickle runs a command when fully unpickled."""
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 1, "hyper_parameters": {"x": Payload(marker)}},
               path)
    return path


# Pickle opcodes (named with a trailing _ where a builtin has the name)


def str_(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def bytes_(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw  # BINBYTES


def int_(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)  # BININT


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def dtype_(spec: str, copy: bool = True) -> bytes:
    return global_("numpy", "dtype") + str_(spec) + b"\x89" + (b"\x88" if copy else b"\x89") + b"\x87R"


def pickled(body: bytes) -> bytes:
    """`body` between protocol 4's header and STOP: a whole pickle."""
    return b"\x80\x04" + body + b"."


V8_FORGERY = pickled(  # an array of dtype('V8') over 8 raw bytes, then that dtype's __setstate__ gives it an
    # object field: the array's bytes become a PyObject pointer (a segfault when read or freed)
    dtype_("V8") + b"\x94" + b"0"
    + global_("numpy.core.multiarray", "_reconstruct") + global_("numpy", "ndarray") + int_(0) + b"\x85"
    + bytes_(b"b") + b"\x87R"
    + b"(" + int_(1) + int_(1) + b"\x85" + b"h\x00" + b"\x89" + bytes_(b"\x41" * 8) + b"tb"
    + b"h\x00" + b"(" + int_(3) + str_("|") + b"N" + b"(" + str_("a") + b"t" + b"}" + str_("a")
    + b"(" + dtype_("O") + int_(0) + b"t" + b"s" + int_(8) + int_(1) + int_(0x3F) + b"tb"
    + b"\x86")
