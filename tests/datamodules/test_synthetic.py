"""SynthSign: both layouts readable and consistent, deterministic, and a real learning problem."""
from __future__ import annotations

import gzip
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from datamodules import synthetic
from datamodules.formats import read_pose_pickle, read_pt_split, read_unisign_labels
from datamodules.keypoints import (FACE_COCO, NUM_COCO_KEYPOINTS, PT_NECK, PT_NUM_JOINTS,
                                   PT_RIGHT_ARM, PT_RIGHT_HAND, PT_LEFT_HAND, RIGHT_HAND_COCO,
                                   SCORE_THRESHOLD)
from datamodules.synthsign import body
from datamodules.synthsign.lexicon import build_lexicon

SIZES = {"num_train": 60, "num_dev": 12, "num_test": 8}
TINY = {"num_train": 4, "num_dev": 2, "num_test": 2}
COCO_RIGHT_WRIST = 10  # COCO-WholeBody body order: 9 left wrist, 10 right wrist


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthsign") / "corpus"
    synthetic.generate(root, workers=1, **SIZES)
    return root


def _split(corpus: Path, split: str):
    labels = read_unisign_labels(corpus / "unisign" / f"labels.{split}")
    samples, skipped = read_pt_split(corpus / "pt", split)
    assert skipped == []
    return labels, samples


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_gloss_names_vocabulary():
    names = synthetic.gloss_names()
    assert len(names) >= 100 and len(set(names)) == len(names)
    assert names == sorted(names) == synthetic.gloss_names()
    assert all(re.fullmatch(r"[A-Z]+", n) for n in names)
    # A smaller lexicon is a prefix of the default one, so default vocabularies cover it.
    assert set(synthetic.gloss_names(40)) < set(names)


def test_layout_schema_and_shapes(corpus):
    manifest = json.loads((corpus / "MANIFEST.json").read_text())
    assert manifest["settings"] == {**synthetic.DEFAULTS, **SIZES}
    assert len(list((corpus / "unisign" / "pose_format").iterdir())) == sum(SIZES.values())
    for split, count in zip(synthetic.SPLITS, SIZES.values()):
        raw = pickle.loads(gzip.decompress((corpus / "unisign" / f"labels.{split}").read_bytes()))
        assert len(raw) == count
        labels, samples = _split(corpus, split)
        for (key, entry), sample in zip(raw.items(), samples):
            assert set(entry) == {"name", "gloss", "text", "video_path"}  # CSL-Daily schema
            assert key == entry["name"] == sample["name"].split("/")[1]
            assert sample["name"] == f"{split}/{key}" and entry["video_path"] == key + ".mp4"
            assert entry["gloss"] == sample["gloss"] and 2 <= len(entry["gloss"]) <= 7
            assert re.fullmatch(r"[a-z ]+", sample["text"])  # PHOENIX style, no punctuation
            assert " " not in entry["text"] and entry["text"][-1] in "。？"  # CSL-Daily style
            pose = pickle.loads((corpus / "unisign" / "pose_format" / f"{key}.pkl").read_bytes())
            assert set(pose) == {"keypoints", "scores"}
            kp, sc = pose["keypoints"], pose["scores"]
            assert type(kp) is np.ndarray and kp.dtype == np.float32 and sc.dtype == np.float32
            frames = len(sample["poses"])
            assert kp.shape == (frames, 1, NUM_COCO_KEYPOINTS, 2) and sc.shape == (frames, 1, 133)
            assert 0.0 <= kp.min() and kp.max() <= 1.0 and 0.0 <= sc.min() and sc.max() <= 1.0
            poses = sample["poses"]
            assert poses.shape == (frames, PT_NUM_JOINTS, 3) and 15 <= frames <= 130
            assert np.all(poses[:, PT_NECK] == 0.0)  # PT root exactly at the origin
            assert np.abs(poses).max() < 0.6  # PT's scale: real data stays within about ±0.5
            read_pose_pickle(corpus / "unisign" / "pose_format" / f"{key}.pkl")  # reader accepts it


def test_every_gloss_in_default_train_split():
    lexicon = build_lexicon()
    plan = synthetic.plan_split(lexicon, 0, "train", synthetic.DEFAULTS["num_train"])
    used = {e.gloss for sentence, _ in plan for e in sentence.glosses}
    assert used == set(synthetic.gloss_names())
    lengths = [len(sentence.glosses) for sentence, _ in plan]
    assert min(lengths) == 2 and max(lengths) == 7


def test_tokenizer_text_covers_corpus(corpus):
    de_lines = synthetic.spoken_sentences_for_tokenizer("de")
    assert de_lines == synthetic.spoken_sentences_for_tokenizer("de")  # deterministic
    de = {w for line in de_lines for w in line.split()}
    zh = {c for line in synthetic.spoken_sentences_for_tokenizer("zh") for c in line}
    for split in synthetic.SPLITS:
        labels, samples = _split(corpus, split)
        assert all(set(s["text"].split()) <= de for s in samples)
        assert all(set(e["text"]) <= zh for e in labels.values())
    with pytest.raises(ValueError, match="fr"):
        synthetic.spoken_sentences_for_tokenizer("fr")


def _gloss_of(word: str, stems: dict[str, str]) -> str | None:
    """The gloss a German-like word inflects (stem + "", "t", "e" or "en"), if any."""
    for cut in (0, 1, 2):
        if word[:len(word) - cut] in stems:
            return stems[word[:len(word) - cut]]
    return None


def test_text_order_differs_from_gloss_order(corpus):
    lexicon = build_lexicon()
    stems = {e.de: e.gloss for e in lexicon}
    zh = {e.gloss: e.zh for e in lexicon}
    labels, samples = _split(corpus, "train")
    reordered = function_words = zh_differs = 0
    for s, label in zip(samples, labels.values()):
        spoken = [g for g in (_gloss_of(w, stems) for w in s["text"].split()) if g]
        assert sorted(spoken) == sorted(s["gloss"])  # every gloss is spoken exactly once
        reordered += spoken != s["gloss"]
        function_words += len(s["text"].split()) > len(s["gloss"])
        zh_differs += not label["text"].startswith("".join(zh[g] for g in label["gloss"]))
    assert reordered >= 0.3 * len(samples) and function_words >= 0.8 * len(samples)
    assert zh_differs >= 0.3 * len(samples)


def test_dropped_detections_and_scores(corpus):
    labels, _ = _split(corpus, "train")
    lost_frames = lost_hands = frames = 0
    for key in labels:
        _, sc = read_pose_pickle(corpus / "unisign" / "pose_format" / f"{key}.pkl")
        body_ok = sc[:, :11].max(1) > SCORE_THRESHOLD
        lost_frames += (~body_ok).sum()
        lost_hands += (body_ok & (sc[:, RIGHT_HAND_COCO].max(1) < SCORE_THRESHOLD)).sum()
        frames += len(sc)
        assert np.median(sc[:, :11]) > 0.8 and np.median(sc[:, 13:23]) < SCORE_THRESHOLD
    assert 0 < lost_frames < 0.05 * frames and 0 < lost_hands < 0.1 * frames


def test_pt_and_coco_describe_same_motion(corpus):
    labels, samples = _split(corpus, "dev")
    pt_xy, coco_xy = [], []
    for sample in samples:
        key = sample["name"].split("/")[1]
        kp, sc = read_pose_pickle(corpus / "unisign" / "pose_format" / f"{key}.pkl")
        ok = sc[:, COCO_RIGHT_WRIST] > SCORE_THRESHOLD
        wrist_pt = sample["poses"][ok, PT_RIGHT_ARM[2], :2]
        wrist_coco = kp[ok, COCO_RIGHT_WRIST]
        pt_xy.append(wrist_pt - wrist_pt.mean(0))  # centre per video: camera offsets differ
        coco_xy.append(wrist_coco - wrist_coco.mean(0))
    pt_xy, coco_xy = np.concatenate(pt_xy), np.concatenate(coco_xy)
    for axis in (0, 1):  # same image axes: x to the signer's left, y down
        assert np.corrcoef(pt_xy[:, axis], coco_xy[:, axis])[0, 1] > 0.95


def test_face_points_follow_mouth_and_match_uni_sign_face():
    jaw = list(range(body.FACE_START, body.FACE_START + 17))
    inner_lips = list(range(body.FACE_START + 60, body.FACE_START + 68))
    assert FACE_COCO == jaw[::2] + inner_lips + [body.FACE_START + 30]  # nose tip is dlib 30
    zero, one = np.zeros(2), np.ones(2)
    closed = body.face_points(np.zeros((2, 3)), zero, zero, zero, 1.0)
    opened = body.face_points(np.zeros((2, 3)), one, zero, zero, 1.0)
    lip_gap = lambda f: f[:, 60 + 6, 1] - f[:, 60 + 2, 1]  # lower-mid minus upper-mid (y down)
    assert np.all(lip_gap(opened) > lip_gap(closed) + 0.01)
    assert np.all(opened[:, 8, 1] > closed[:, 8, 1])  # chin (dlib 8) drops
    np.testing.assert_allclose(opened[:, 30], closed[:, 30])  # the nose does not move


def test_glosses_are_learnable_by_nearest_neighbour(corpus):
    """Per-gloss mean pose (hand shape + wrist positions) -> 1-NN on train tokens, scored on
    dev tokens: far above chance (1/120)."""
    alignments = json.loads((corpus / "alignments.json").read_text())

    def tokens(split):
        _, samples = _split(corpus, split)
        feats, names = [], []
        for sample in samples:
            poses = sample["poses"]
            for gloss, start, end in alignments[split][sample["name"].split("/")[1]]:
                span = poses[start + (end - start) // 4: end - (end - start) // 4 or end]
                wrists = span[:, [PT_RIGHT_HAND[0], PT_LEFT_HAND[0]]]
                hands = np.concatenate([span[:, PT_RIGHT_HAND] - span[:, PT_RIGHT_HAND[:1]],
                                        span[:, PT_LEFT_HAND] - span[:, PT_LEFT_HAND[:1]]], 1)
                feats.append(np.concatenate([wrists.mean(0).ravel(), 2 * hands.mean(0).ravel()]))
                names.append(gloss)
        return np.array(feats), np.array(names)

    train_x, train_y = tokens("train")
    dev_x, dev_y = tokens("dev")
    known = np.isin(dev_y, train_y)
    dist = ((dev_x[known, None] - train_x[None]) ** 2).sum(-1)
    accuracy = (train_y[dist.argmin(1)] == dev_y[known]).mean()
    assert known.sum() >= 20 and accuracy > 0.5, accuracy


def test_deterministic_and_seed_dependent(corpus, tmp_path):
    a, b, c, d = (tmp_path / n for n in "abcd")
    synthetic.generate(a, workers=1, **TINY)
    synthetic.generate(b, workers=1, **TINY)
    synthetic.generate(c, workers=1, seed=1, **TINY)
    synthetic.generate(d, workers=2, **TINY)  # worker processes change nothing
    assert _tree(a) == _tree(b) == _tree(d)
    tree_a, tree_c = _tree(a), _tree(c)
    assert tree_a["pt/train.skels"] != tree_c["pt/train.skels"]
    assert tree_a["unisign/labels.train"] != tree_c["unisign/labels.train"]


def test_ensure_synthsign_is_idempotent_and_guards_folders(tmp_path):
    root = tmp_path / "data" / "synthsign"
    root.mkdir(parents=True)  # an empty folder is filled (DataModules pass their data_dir)
    assert synthetic.ensure_synthsign(root, **TINY) == root
    stamp = (root / "MANIFEST.json").stat().st_mtime_ns
    assert synthetic.ensure_synthsign(str(root), **TINY) == root
    assert (root / "MANIFEST.json").stat().st_mtime_ns == stamp  # not regenerated
    assert sorted(p.name for p in root.parent.iterdir()) == ["synthsign"]  # no temp dirs left
    with pytest.raises(ValueError, match=re.escape(str(root))):
        synthetic.ensure_synthsign(root, seed=3, **TINY)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    with pytest.raises(ValueError, match="mine"):
        synthetic.ensure_synthsign(foreign, **TINY)
    assert (foreign / "notes.txt").read_text() == "user data"
    next((root / "unisign" / "pose_format").iterdir()).unlink()  # a damaged corpus
    with pytest.raises(ValueError, match="incomplete"):
        synthetic.ensure_synthsign(root, **TINY)


def test_ensure_synthsign_loser_of_a_race_keeps_the_winner(tmp_path, monkeypatch):
    root = tmp_path / "synthsign"
    real_generate = synthetic.generate

    def racing_generate(out, **kwargs):  # another process finishes first, mid-way through ours
        real_generate(root, **kwargs)
        return real_generate(out, **kwargs)

    monkeypatch.setattr(synthetic, "generate", racing_generate)
    winner = (tmp_path / "synthsign" / "MANIFEST.json")
    assert synthetic.ensure_synthsign(root, **TINY) == root
    assert winner.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthsign"]  # our copy discarded


def test_bad_settings_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        synthetic.generate(tmp_path / "x", num_train=0)
    with pytest.raises(ValueError, match="language"):
        synthetic.generate(tmp_path / "x", language="fr")
    with pytest.raises(ValueError, match="num_glosses"):
        synthetic.generate(tmp_path / "x", num_glosses=3)
    with pytest.raises(TypeError, match="colour"):
        synthetic.ensure_synthsign(tmp_path / "x", colour="red")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    with pytest.raises(FileExistsError, match="full"):
        synthetic.generate(tmp_path / "full", **TINY)


def test_cli_writes_corpus_and_prints_summary(tmp_path, capsys):
    synthetic.main(["--out", str(tmp_path / "cli"), "--num-train", "3", "--num-dev", "1",
                    "--num-test", "1", "--seed", "5", "--language", "de"])
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("SynthSign: 5 videos") and str(tmp_path / "cli") in summary
    labels = read_unisign_labels(tmp_path / "cli" / "unisign" / "labels.train")
    assert all(re.fullmatch(r"[a-z ]+", e["text"]) for e in labels.values())  # de in both layouts
    manifest = json.loads((tmp_path / "cli" / "MANIFEST.json").read_text())
    assert manifest["settings"]["seed"] == 5 and manifest["videos"]["train"] == 3
