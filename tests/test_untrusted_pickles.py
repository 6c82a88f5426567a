"""Hostile data pickles: no code runs, nothing crashes the process, memory bombs are refused before
allocation, and every failure is a ValueError naming the file (which `on_bad_sample` handles)."""
from __future__ import annotations

import gzip
import pickle
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamodules.formats import (MAX_POSE_VALUES, UnsafePickleError, load_pickle, read_pose_pickle,
                                 read_unisign_labels)
from tests.cli_runs import REPO
from tests.hostile_files import V8_FORGERY, bytes_, dtype_, global_, int_, pickled, str_

CALLS: list = []


def canary(*args):
    """A global a hostile pickle names: if the reader ever calls it, code ran."""
    CALLS.append(args)
    return args


def test_the_void_dtype_forgery_is_refused_not_a_segfault(tmp_path):
    path = tmp_path / "forged.pkl"
    path.write_bytes(V8_FORGERY)
    # in a child process: were it admitted, the segfault would take the test session with it
    probe = ("import sys; from datamodules.formats import load_pickle\n"
             "try:\n    print(load_pickle(sys.argv[1])[0].tolist())\nexcept ValueError as err:\n    print(err)")
    proc = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert re.search(r"forged\.pkl: refusing to unpickle dtype.*V8", proc.stdout), proc.stdout
    # the same state on a numeric dtype is refused at BUILD
    path.write_bytes(pickled(dtype_("f8") + b"(" + int_(3) + str_("|") + b"N(" + str_("a") + b"t}" + int_(8)
                             + int_(1) + int_(0x3F) + b"tb"))
    with pytest.raises(UnsafePickleError, match="dtype state"):
        load_pickle(path)


def test_a_pickle_cannot_change_numpys_shared_dtypes(tmp_path):
    path = tmp_path / "swap.pkl"  # dtype('f4', copy=False) is numpy's own float32; BUILD would flip its byte order
    path.write_bytes(pickled(dtype_("f4", copy=False) + b"(" + int_(3) + str_(">") + b"NNN" + int_(-1) + int_(-1)
                             + int_(0) + b"tb"))
    assert load_pickle(path) == np.dtype(">f4")
    assert np.dtype("float32").byteorder == "=" and np.ones(1, np.float32).tobytes() == b"\x00\x00\x80?"


@pytest.mark.parametrize("body, message", [
    # an uninitialised array declaring 1e12 elements
    (global_("numpy.core.multiarray", "_reconstruct") + global_("numpy", "ndarray") + b"(" + int_(10**6)
     + int_(10**6) + b"t" + bytes_(b"b") + b"\x87R", "more than"),
    # numpy.ndarray's own constructor: shape and strides, a zero-stride view declaring 1e12 elements
    (global_("numpy", "ndarray") + b"((" + int_(10**6) + int_(10**6) + b"t" + dtype_("f4") + bytes_(b"\0" * 4)
     + int_(0) + b"(" + int_(0) + int_(0) + b"ttR", "is not callable"),
    (global_("builtins", "bytearray") + int_(2**31 - 1) + b"\x85R", "a size, not data"),
    (global_("builtins", "bytes") + int_(2**31 - 1) + b"\x85R", "a size, not data"),
    # one memoised 64 KiB bytes object copied 20,000 times (1.3 GB) by bytearray
    (bytes_(b"\0" * 65536) + b"\x94" + b"(" + (global_("builtins", "bytearray") + b"h\x00\x85R") * 20000 + b"l",
     "more than"),
], ids=["reconstruct-1e12", "ndarray-zero-stride", "bytearray-size", "bytes-size", "memo-amplified-bytearray"])
def test_memory_bombs_are_refused_before_allocation(tmp_path, body, message):
    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickled(body))
    with pytest.raises(ValueError, match=rf"bomb\.pkl.*({message})"):
        load_pickle(path)


def test_a_gzip_bomb_stops_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr("datamodules.formats.MAX_UNPICKLED_BYTES", 1 << 20)
    path = tmp_path / "labels.train"
    path.write_bytes(gzip.compress(b"\0" * (8 << 20)))  # 8 MiB inflated from ~8 KiB
    with pytest.raises(UnsafePickleError, match=r"labels\.train: more than 1048576 bytes"):
        read_unisign_labels(path)


def test_declared_values_count_memoised_references(tmp_path):
    # a (133, 2) frame referenced a million times: a few bytes of pickle, 266M values once converted
    frame = [[0.5, 0.5]] * 133
    path = tmp_path / "refs.pkl"
    path.write_bytes(pickle.dumps({"keypoints": [frame] * (MAX_POSE_VALUES // 266 + 1), "scores": [[1.0] * 133]}))
    with pytest.raises(ValueError, match=rf"refs\.pkl: 'keypoints' holds more than {MAX_POSE_VALUES} values"):
        read_pose_pickle(path)


# ------------------------------------------- per-sample failures of every Python type, one error


@pytest.mark.parametrize("obj, message", [
    ({"keypoints": [[[10**400, 0.0]] * 133], "scores": [[1.0] * 133]}, "OverflowError"),
    ({"keypoints": np.zeros((1, 133, 2)), "scores": [[1e300] * 133]}, "NaN or infinite"),
    ({"keypoints": np.zeros((2, 133, 2)), "scores": np.ones((2, 133)), "start": "deep"}, "'start' must be"),
    ({"keypoints": [{"x": 1}] * 2, "scores": np.ones((2, 133))}, "TypeError"),
    ({"keypoints": "x" * 10, "scores": np.ones((2, 133))}, "ValueError|could not convert"),
], ids=["overflow", "beyond-float32", "start-type", "dict-frames", "string"])
def test_every_bad_pose_content_is_one_named_value_error(tmp_path, obj, message):
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError, match=rf"odd\.pkl: .*({message})"):
        read_pose_pickle(path)


def _deep(depth: int, leaf) -> bytes:
    """A pickle of a `depth`-deep nested list around `leaf`, written by hand (pickle.dumps would recurse)."""
    return b"]" * depth + pickle.dumps(leaf, protocol=4)[2:-1] + b"a" * depth


def test_deep_nesting_is_a_named_error_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.pkl"
    body = (b"}" + str_("keypoints") + _deep(200_000, 1.0) + b"s" + str_("scores") + _deep(3, 1.0) + b"s"
            + str_("start") + _deep(200_000, 1) + b"s")
    path.write_bytes(pickled(body))
    with pytest.raises(ValueError, match=r"deep\.pkl: "):
        read_pose_pickle(path)
    labels = tmp_path / "labels.dev"
    labels.write_bytes(pickled(b"}" + str_("a") + b"}" + str_("text") + str_("hello") + b"s" + str_("length")
                               + _deep(200_000, 3) + b"ss"))
    with pytest.raises(ValueError, match=r"labels\.dev: sample 'a' has a 'length' that is not a frame count"):
        read_unisign_labels(labels)


@pytest.mark.parametrize("field, value", [("video_path", 5), ("name", [1]), ("gloss", 3), ("text", None),
                                          ("length", "12"), ("length", True)])
def test_wrong_label_types_are_named_and_skippable(tmp_path, field, value):
    path = tmp_path / "labels.train"
    good = {"name": "ok", "text": "fine", "gloss": "A B", "video_path": "ok.mp4"}
    path.write_bytes(gzip.compress(pickle.dumps({"ok": good, "bad": {**good, "name": "bad", field: value}})))
    with pytest.raises(ValueError, match=rf"labels\.train: sample 'bad' .*'{field}'"):
        read_unisign_labels(path)
    bad: list = []
    assert list(read_unisign_labels(path, bad=bad)) == ["ok"]
    assert [name for name, _ in bad] == ["bad"]


# ------------------------------------------------------------------------------------- the fuzzer

GLOBALS = [("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
           ("numpy._core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"), ("builtins", "bytes"),
           ("builtins", "bytearray"), ("builtins", "list"), ("builtins", "set"), ("builtins", "dict"),
           ("collections", "OrderedDict"), ("_codecs", "encode"), ("__builtin__", "set"),
           ("tests.test_untrusted_pickles", "canary"), ("os", "system"), ("builtins", "eval"),
           ("builtins", "getattr"), ("numpy", "frombuffer"), ("numpy.lib.stride_tricks", "as_strided"),
           ("numpy.dtypes", "VoidDType"), ("copyreg", "_reconstructor")]
DTYPES = ["f4", "<f8", ">i2", "b1", "u1", "c8", "V8", "V0", "O", "O8", "S0", "<U1", "M8", "f4,f4", "(2)f4"]
SIMPLE_OPS = [b"(", b"t", b"\x85", b"\x86", b"\x87", b"]", b"a", b"e", b"}", b"s", b"u", b"R", b"b", b"\x81",
              b"N", b"\x88", b"\x89", b"\x94", b"2", b"0", b")", b"\x8f", b"\x90", b"\x91", b"l", b"d", b"o",
              b"\x92", b"\x97", b"\x98"]

atoms = st.one_of(
    st.sampled_from(SIMPLE_OPS),
    st.integers(-(2**31), 2**31 - 1).map(int_),
    st.integers(0, 255).map(lambda n: b"K" + bytes([n])),
    st.integers(0, 8).map(lambda n: b"h" + bytes([n])),  # BINGET
    st.floats(allow_nan=True).map(lambda x: b"G" + struct.pack(">d", x)),
    st.text(max_size=8).map(str_),
    st.binary(max_size=24).map(bytes_),
    st.sampled_from(GLOBALS).map(lambda g: global_(*g)),
    st.sampled_from(GLOBALS).map(lambda g: str_(g[0]) + str_(g[1]) + b"\x93"),
    st.sampled_from(DTYPES).map(dtype_),  # whole dtype constructions, so BUILD on dtypes is reached often
    st.tuples(st.sampled_from(["<", ">", "|", "="]), st.sampled_from([b"N", b"(" + str_("a") + b"t"]),
              st.sampled_from([-1, 0, 8]), st.sampled_from([0, 0x3F])).map(
        lambda s: b"(" + int_(3) + str_(s[0]) + b"N" + s[1] + b"N" + int_(s[2]) + int_(s[2]) + int_(s[3]) + b"t"),
)


@st.composite
def pickles(draw) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))  # plain garbage, sometimes gzip-magic
    return pickled(b"".join(draw(st.lists(atoms, max_size=40))))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(raw=pickles(), reader=st.sampled_from([load_pickle, read_pose_pickle, read_unisign_labels]))
def test_fuzzed_pickles_never_run_code_or_crash(tmp_path, raw, reader):
    path = tmp_path / "fuzz.pkl"
    path.write_bytes(raw)
    try:
        reader(path)
    except ValueError as err:  # UnsafePickleError included
        assert "fuzz.pkl" in str(err)
    assert CALLS == [], "a global from the pickle was called"
