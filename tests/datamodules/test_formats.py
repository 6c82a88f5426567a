from __future__ import annotations

import gzip
import os
import subprocess
import sys
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamodules.formats import (UnsafePickleError, load_pickle, read_pose_pickle, read_pt_split,
                                 read_skels, read_unisign_labels, write_skels)

SHARED_LABELS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "labels"


# ------------------------------------------------------------------------------------- .skels

@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_skels_round_trip(tmp_path_factory, lengths, seed):
    rng = np.random.default_rng(seed)
    seqs = [rng.uniform(-0.5, 0.5, (t, 50, 3)).astype(np.float32) for t in lengths]
    path = tmp_path_factory.mktemp("skels") / "x.skels"
    write_skels(path, seqs)
    back = read_skels(path)
    assert [b.shape for b in back] == [s.shape for s in seqs]
    for b, s in zip(back, seqs):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, s, atol=1e-6)


def test_skels_line_layout_has_pt_counter(tmp_path):
    seq = np.zeros((4, 50, 3), np.float32)
    write_skels(tmp_path / "x.skels", [seq])
    values = np.array((tmp_path / "x.skels").read_text().split(), dtype=float).reshape(4, 151)
    np.testing.assert_allclose(values[:, -1], [0, 0.25, 0.5, 0.75])  # i / T


def test_write_skels_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="sequence 0 has shape"):
        write_skels(tmp_path / "x.skels", [np.zeros((3, 49, 3))])


def test_read_skels_bad_value_count_names_file_and_line(tmp_path):
    path = tmp_path / "dev.skels"
    path.write_text(" ".join(["0"] * 151) + "\n" + " ".join(["0"] * 152) + "\n")
    with pytest.raises(ValueError, match=r"dev\.skels line 2: 152 values is not a multiple of 151"):
        read_skels(path)


def _write_pt(root: Path, split: str, seqs, glosses, texts, names):
    write_skels(root / f"{split}.skels", seqs)
    (root / f"{split}.gloss").write_text("\n".join(glosses) + "\n")
    (root / f"{split}.text").write_text("\n".join(texts) + "\n")
    (root / f"{split}.files").write_text("\n".join(names) + "\n")


def test_read_pt_split_reads_siblings(tmp_path):
    seqs = [np.full((2, 50, 3), 0.1, np.float32), np.full((3, 50, 3), -0.2, np.float32)]
    _write_pt(tmp_path, "dev", seqs, ["A B", "C"], ["a b", "c"], ["dev/x", "dev/y"])
    samples, skipped = read_pt_split(tmp_path, "dev")
    assert skipped == []
    assert [s["name"] for s in samples] == ["dev/x", "dev/y"]
    assert samples[0]["gloss"] == ["A", "B"] and samples[1]["text"] == "c"
    assert samples[1]["poses"].shape == (3, 50, 3)


def test_read_pt_split_skips_a_trailing_blank_row_and_trims_names(tmp_path):
    """Real PT files end with an empty line in all four files (the PT loader skips it) and carry
    trailing spaces in `.files` names, which would then match no label."""
    seqs = [np.full((2, 50, 3), 0.1, np.float32), np.full((3, 50, 3), -0.2, np.float32)]
    _write_pt(tmp_path, "dev", seqs, ["A B", "C"], ["a b", "c"], ["dev/x ", "dev/y\t"])
    for suffix in ("skels", "gloss", "text", "files"):
        with (tmp_path / f"dev.{suffix}").open("a") as f:
            f.write("\n")
    samples, skipped = read_pt_split(tmp_path, "dev")
    assert [s["name"] for s in samples] == ["dev/x", "dev/y"] and skipped == []


def test_read_pt_split_line_count_mismatch(tmp_path):
    seqs = [np.zeros((2, 50, 3), np.float32)] * 2
    _write_pt(tmp_path, "dev", seqs, ["A", "B"], ["a", "b"], ["dev/x", "dev/y"])
    (tmp_path / "dev.text").write_text("a\n")
    with pytest.raises(ValueError, match=r"line counts disagree.*dev\.text: 1.*dev\.skels: 2"):
        read_pt_split(tmp_path, "dev")


@pytest.mark.parametrize("bad_line, message", [
    (" ".join(["0.1"] * 150), "150 values is not a multiple of 151"),
    (" ".join(["nan"] * 151), "NaN or infinite"),
    ("", "empty sequence"),
])
def test_read_pt_split_bad_line_raise_or_skip(tmp_path, bad_line, message):
    _write_pt(tmp_path, "train", [np.zeros((2, 50, 3), np.float32)] * 2, ["A", "B"], ["a", "b"],
              ["train/good", "train/bad"])
    lines = (tmp_path / "train.skels").read_text().splitlines()
    (tmp_path / "train.skels").write_text(lines[0] + "\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=rf"train\.skels line 2 \(sample 'train/bad'\): {message}"):
        read_pt_split(tmp_path, "train")
    samples, skipped = read_pt_split(tmp_path, "train", on_bad_sample="skip")
    assert [s["name"] for s in samples] == ["train/good"]
    assert [name for name, _ in skipped] == ["train/bad"]


def test_read_pt_split_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test\.skels"):
        read_pt_split(tmp_path, "test")


# ---------------------------------------------------------------------------- safe unpickling

class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unsafe_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"keypoints": _Evil(marker)}))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*(posix|os)\.system"):
        read_pose_pickle(path)
    assert not marker.exists()
    gz = tmp_path / "labels.train"
    gz.write_bytes(gzip.compress(pickle.dumps({"a": _Evil(marker)})))
    with pytest.raises(UnsafePickleError, match="labels.train"):
        read_unisign_labels(gz)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_safe_pickle_admits_numpy_in_every_protocol(tmp_path, protocol):
    obj = {"a": np.arange(6, dtype=np.float64).reshape(2, 3), "s": np.float32(2.5),
           "d": np.dtype("int16"), "l": [1, (2.0, "x")], "b": b"\x00\xff"}
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(obj, protocol=protocol))
    back = load_pickle(tmp_path / "ok.pkl")
    np.testing.assert_array_equal(back["a"], obj["a"])
    assert back["s"] == obj["s"] and back["d"] == obj["d"]
    assert back["l"] == obj["l"] and back["b"] == obj["b"]


# -------------------------------------------------------------------------------- pose pickles

def _dump(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj))
    return path


def test_read_pose_pickle_layouts(tmp_path):
    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 1, (5, 2, 133, 2))
    sc = rng.uniform(0, 1, (5, 2, 133))
    for name, k, s in [("p1", kp[:, :1], sc[:, :1]), ("flat", kp[:, 0], sc[:, 0]),
                       ("multi", kp, sc), ("list", list(kp[:, :1]), list(sc[:, :1]))]:
        keypoints, scores = read_pose_pickle(_dump(tmp_path / f"{name}.pkl",
                                                   {"keypoints": k, "scores": s}))
        assert keypoints.dtype == np.float32 and scores.dtype == np.float32
        np.testing.assert_allclose(keypoints, kp[:, 0], rtol=1e-6)  # person 0
        np.testing.assert_allclose(scores, sc[:, 0], rtol=1e-6)


def test_read_pose_pickle_ragged_person_list_and_window(tmp_path):
    kp = [np.full((1 + t % 2, 133, 2), t, np.float32) for t in range(6)]  # 1 or 2 persons
    sc = [np.ones((1 + t % 2, 133), np.float32) for t in range(6)]
    keypoints, scores = read_pose_pickle(_dump(tmp_path / "r.pkl",
                                               {"keypoints": kp, "scores": sc, "start": 1, "end": 4}))
    assert keypoints.shape == (3, 133, 2) and scores.shape == (3, 133)
    np.testing.assert_array_equal(keypoints[:, 0, 0], [1, 2, 3])


@pytest.mark.parametrize("obj, message", [
    ({"keypoints": np.zeros((0, 1, 133, 2)), "scores": np.zeros((0, 1, 133))}, "empty pose sequence"),
    ({"keypoints": np.full((2, 1, 133, 2), np.nan), "scores": np.ones((2, 1, 133))}, "NaN or infinite"),
    ({"keypoints": np.zeros((2, 1, 17, 2)), "scores": np.ones((2, 1, 17))}, "not"),
    ({"keypoints": np.zeros((2, 133, 2))}, "'keypoints' and 'scores'"),
    ({"keypoints": np.zeros((2, 133, 2)), "scores": np.ones((3, 133))}, "2 keypoint frames but 3"),
    # what numpy itself would have raised as IndexError / TypeError / an unnamed ValueError
    ({"keypoints": [np.zeros((1, 133, 2)), np.zeros((0, 133, 2))], "scores": [np.ones((1, 133))] * 2},
     "'keypoints' frame 1 holds no person"),
    ({"keypoints": np.zeros((2, 0, 133, 2)), "scores": np.ones((2, 0, 133))}, "no person"),
    ({"keypoints": np.zeros((4, 133, 2)), "scores": np.ones((4, 133)), "start": 1.0}, "'start' must be an integer"),
    ({"keypoints": np.full((2, 133, 2), "x"), "scores": np.ones((2, 133))}, r"refusing to unpickle dtype.*<U1"),
    ({"keypoints": [np.zeros((133, 2)), np.zeros((133, 3))], "scores": [np.ones(133)] * 2}, "shape"),
])
def test_read_pose_pickle_bad_content_names_file(tmp_path, obj, message):
    with pytest.raises(ValueError, match=message) as info:
        read_pose_pickle(_dump(tmp_path / "bad.pkl", obj))
    assert "bad.pkl" in str(info.value)


def test_read_pose_pickle_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        read_pose_pickle(tmp_path / "nope.pkl")
    good = pickle.dumps({"keypoints": np.zeros((2, 133, 2)), "scores": np.ones((2, 133))})
    (tmp_path / "cut.pkl").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cut\.pkl: corrupt pickle"):
        read_pose_pickle(tmp_path / "cut.pkl")


# ---------------------------------------------------------------------------------- labels

def _gz(path: Path, obj) -> Path:
    path.write_bytes(gzip.compress(pickle.dumps(obj)))
    return path


def test_read_labels_csl_daily_schema(tmp_path):
    path = _gz(tmp_path / "labels.dev", {"S1": {"name": "S1", "gloss": ["他", "今天"], "text": "他今年四岁。",
                                                "video_path": "S1.mp4"}})
    labels = read_unisign_labels(path)
    assert labels == {"S1": {"name": "S1", "gloss": ["他", "今天"], "text": "他今年四岁。",
                             "video_path": "S1.mp4", "length": None}}


def test_read_labels_gfslt_phoenix_schema(tmp_path):
    path = _gz(tmp_path / "labels.dev", {"dev/a": {"name": "dev/a", "gloss": "DRUCK TIEF KOMMEN",
                                                   "text": "tiefer luftdruck", "length": 42,
                                                   "imgs_path": ["dev/a/images0001.png"]}})
    entry = read_unisign_labels(path)["dev/a"]
    assert entry["gloss"] == ["DRUCK", "TIEF", "KOMMEN"]
    assert entry["length"] == 42 and entry["video_path"] is None


def test_read_labels_bad_length_names_file_and_sample(tmp_path):
    path = _gz(tmp_path / "labels.dev", {"dev/a": {"name": "dev/a", "text": "t", "length": "n/a"}})
    with pytest.raises(ValueError, match=r"labels\.dev: sample 'dev/a' has a 'length' that is not a frame count"):
        read_unisign_labels(path)


def test_read_labels_entry_without_text_names_file_and_sample(tmp_path):
    path = _gz(tmp_path / "labels.train", {"S7": {"name": "S7", "gloss": ["x"]}})
    with pytest.raises(ValueError, match=r"labels\.train: sample 'S7' has no 'text'"):
        read_unisign_labels(path)


def test_real_label_files_counts():
    if not SHARED_LABELS.is_dir():
        pytest.skip(f"reference labels not present at {SHARED_LABELS}")
    expected = {"csl_daily": (18401, 1077, 1176), "phoenix2014t": (7096, 519, 642)}
    for dataset, counts in expected.items():
        for split, count in zip(("train", "dev", "test"), counts):
            labels = read_unisign_labels(SHARED_LABELS / dataset / f"labels.{split}")
            assert len(labels) == count
            assert all(isinstance(v["gloss"], list) and isinstance(v["text"], str)
                       for v in labels.values())


# ------------------------------------------------------------------ PT text files: encoding, counter

def _pt_lines(root: Path, split: str = "dev"):
    seqs = [np.full((3, 50, 3), 0.1, np.float32), np.full((2, 50, 3), 0.2, np.float32)]
    _write_pt(root, split, seqs, ["DRUCK TIEF", "MÜDE"], ["über tief", "müde"], [f"{split}/a", f"{split}/b"])


def test_pt_text_is_utf8_whatever_the_locale_and_a_bom_is_dropped(tmp_path):
    _pt_lines(tmp_path)
    for suffix in ("gloss", "text", "files"):
        path = tmp_path / f"dev.{suffix}"
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Windows editors save UTF-8
    probe = ("import sys; from datamodules.formats import read_pt_split\n"
             "samples, _ = read_pt_split(sys.argv[1], 'dev')\n"
             "print(repr([(s['name'], s['gloss'], s['text']) for s in samples]))")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONIOENCODING": "utf-8"}  # an ASCII locale: a locale-dependent open() fails on "Ü"
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True,
                          encoding="utf-8", env=env, cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == repr([("dev/a", ["DRUCK", "TIEF"], "über tief"), ("dev/b", ["MÜDE"], "müde")])


@pytest.mark.parametrize("suffix", ["gloss", "text", "files", "skels"])
def test_non_utf8_bytes_name_file_and_line_and_honour_skip(tmp_path, suffix):
    _pt_lines(tmp_path)
    path = tmp_path / f"dev.{suffix}"
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:4] + b"\xff\xfe" + lines[1][4:]  # second sample's line
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=rf"dev\.{suffix} line 2: not UTF-8"):
        read_pt_split(tmp_path, "dev")
    samples, skipped = read_pt_split(tmp_path, "dev", on_bad_sample="skip")
    assert [s["name"] for s in samples] == ["dev/a"] and len(skipped) == 1 and "line 2" in skipped[0][1]


@pytest.mark.parametrize("suffix", ["gloss", "text", "files"])
def test_empty_gloss_text_or_name_lines_are_bad_samples(tmp_path, suffix):
    _pt_lines(tmp_path)
    path = tmp_path / f"dev.{suffix}"
    path.write_text(path.read_text(encoding="utf-8").split("\n")[0] + "\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"dev\.{suffix} line 2: empty"):
        read_pt_split(tmp_path, "dev")
    samples, skipped = read_pt_split(tmp_path, "dev", on_bad_sample="skip")
    assert [s["name"] for s in samples] == ["dev/a"] and len(skipped) == 1


@settings(max_examples=40, deadline=None)
@given(frames=st.integers(2, 40), shift=st.integers(1, 150), seed=st.integers(0, 2**16))
def test_shifted_skels_columns_are_caught(tmp_path_factory, frames, shift, seed):
    """Values dropped at the start and as many added at the end keep a multiple of 151 values;
    the counter column then holds joint coordinates."""
    path = tmp_path_factory.mktemp("skels") / "x.skels"
    write_skels(path, [np.random.default_rng(seed).uniform(-0.5, 0.5, (frames, 50, 3))])
    values = path.read_text().split()
    path.write_text(" ".join(values[shift:] + ["0.1"] * shift) + "\n")
    with pytest.raises(ValueError, match=r"x\.skels line 1: the counter column .* is not i/T"):
        read_skels(path)


def test_counter_rounded_like_pt_sample_data_is_accepted(tmp_path):
    frames = np.concatenate([np.zeros((42, 150)), np.round(np.arange(42) / 42, 4)[:, None]], axis=1)
    (tmp_path / "x.skels").write_text(" ".join(f"{v:.5f}" for v in frames.reshape(-1)) + "\n")
    assert read_skels(tmp_path / "x.skels")[0].shape == (42, 50, 3)
