from __future__ import annotations

import copy
import gzip
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import datamodules.batches as batches
from datamodules.batches import BadSampleError, ShardSampler
from datamodules.keypoints import PART_SLICES, body_extremes, normalise_clips, part_nodes, rebox_clips, sample_frame_indices
from datamodules.tokenization import build_word_level_tokenizer
from datamodules.translation import SignTranslationDataModule
from tests.datamodules.csl_daily import TEXTS, make_pose
from tests.datamodules.csl_daily import csl_datamodule as _dm
from tests.datamodules.csl_daily import write_csl as _write_csl
from tests.hostile_files import V8_FORGERY

# ------------------------------------------------------------------ Uni-Sign reference (loops)


def _ref_crop_scale(motion, thr):
    """Uni-Sign datasets.py crop_scale, transcribed with ratio = 1."""
    result = copy.deepcopy(motion)
    valid = motion[motion[..., 2] > thr][:, :2]
    if len(valid) < 4:
        return np.zeros(motion.shape), 0
    xmin, xmax = min(valid[:, 0]), max(valid[:, 0])
    ymin, ymax = min(valid[:, 1]), max(valid[:, 1])
    scale = max(xmax - xmin, ymax - ymin)
    if scale == 0:
        return np.zeros(motion.shape), 0
    xs, ys = (xmin + xmax - scale) / 2, (ymin + ymax - scale) / 2
    result[..., :2] = (motion[..., :2] - [xs, ys]) / scale
    result[..., :2] = (result[..., :2] - 0.5) * 2
    result = np.clip(result, -1, 1)
    result[result[..., 2] <= thr] = 0
    return result, scale


def _ref_load_part_kp(skeletons, confs, thr=0.3):
    """Uni-Sign datasets.py load_part_kp on (T, 133, 2) / (T, 133), frame by frame."""
    face = list(range(23, 40))[::2] + list(range(83, 91)) + [53]
    out, scale = {}, None
    for part in ["body", "left", "right", "face"]:
        kps, cs = [], []
        for sk, cf in zip(skeletons, confs):
            if part == "body":
                idx = [0] + list(range(3, 11))
                k = sk[idx]
            elif part == "left":
                idx = list(range(91, 112))
                k = sk[idx] - sk[91]
            elif part == "right":
                idx = list(range(112, 133))
                k = sk[idx] - sk[112]
            else:
                idx = face
                k = sk[idx] - sk[53]
            kps.append(k)
            cs.append(cf[idx])
        motion = np.concatenate([np.stack(kps), np.stack(cs)[..., None]], axis=-1)
        if part == "body":
            result, scale = _ref_crop_scale(motion, thr)
        elif scale == 0:
            result = np.zeros(motion.shape)
        else:
            result = motion.copy()
            result[..., :2] = result[..., :2] / scale
            result = np.clip(result, -1, 1)
            result[result[..., 2] <= thr] = 0
        out[part] = result
    return out, scale


def normalise_parts(keypoints, scores):
    """One clip through ``normalise_clips``: ({part: (T, V, 3) numpy}, scale)."""
    out, _, scale = normalise_clips(part_nodes(keypoints, scores), np.array([len(keypoints)]))
    return {n: out[:, nodes].numpy() for n, nodes in PART_SLICES.items()}, float(scale[0])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), frames=st.integers(1, 6), score=st.floats(0.1, 1.0))
def test_normalise_parts_matches_unisign(seed, frames, score):
    pose = make_pose(frames, np.random.default_rng(seed), score)
    kp, sc = pose["keypoints"][:, 0].astype(np.float32), pose["scores"][:, 0]
    ours, scale = normalise_parts(kp, sc)
    ref, ref_scale = _ref_load_part_kp(kp, sc)
    assert scale == pytest.approx(ref_scale, rel=1e-6)
    for part in ref:
        assert ours[part].dtype == np.float32
        np.testing.assert_allclose(ours[part], ref[part], atol=1e-5)


def test_normalise_parts_unconfident_body_gives_zero_scale():
    kp = np.full((3, 133, 2), 0.5, np.float32)
    parts, scale = normalise_parts(kp, np.full((3, 133), 0.2, np.float32))
    assert scale == 0 and all(not p.any() for p in parts.values())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), lengths=st.lists(st.integers(1, 7), min_size=1, max_size=5),
       unconfident=st.integers(0, 4))
def test_normalise_clips_equals_one_clip_at_a_time(seed, lengths, unconfident):
    """A batch normalised in one call is bit-identical to its clips normalised one by one: each
    clip keeps its own crop box, and an unconfident clip is zeros without touching the others."""
    rng = np.random.default_rng(seed)
    clips = [make_pose(n, rng) for n in lengths]
    if unconfident < len(clips):
        clips[unconfident]["scores"][:] = 0.1
    kps = [c["keypoints"][:, 0].astype(np.float32) for c in clips]
    scs = [c["scores"][:, 0] for c in clips]
    batch, _, scales = normalise_clips(np.concatenate([part_nodes(k, sc) for k, sc in zip(kps, scs)]), np.array(lengths))
    assert batch.is_contiguous()  # items are then row ranges of it, which the collate copies whole
    clips = np.split(batch.numpy(), np.cumsum(lengths)[:-1])
    for i, (k, sc) in enumerate(zip(kps, scs)):
        one, scale = normalise_parts(k, sc)
        assert scales[i] == scale and (scale == 0) == (i == unconfident)
        for name, nodes in PART_SLICES.items():
            assert np.array_equal(clips[i][:, nodes], one[name]), (i, name)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
       unconfident_subset=st.booleans())
def test_rebox_clips_equals_normalising_the_subsets(seed, lengths, unconfident_subset):
    """Clips normalised whole (the packed cache), then moved onto their frame subsets' crop boxes,
    equal the subsets normalised from raw nodes: the same scales, values within float32 rounding
    (random hands often reach past the body box, so clipped values are covered), and zeros
    for a subset too unconfident to normalise although its whole clip is not. A subset of all
    frames comes back bit-identical."""
    rng = np.random.default_rng(seed)
    clips = []
    for n in lengths:
        pose = make_pose(n, rng)
        clips.append(part_nodes(pose["keypoints"][:, 0].astype(np.float32), pose["scores"][:, 0]))
    subsets = [np.sort(rng.choice(n, rng.integers(1, n + 1), replace=False)) for n in lengths]
    if unconfident_subset and lengths[0] > 1:  # clip 0's first frame has no confident body point
        clips[0][0, PART_SLICES["body"], 2] = 0.1
        subsets[0] = np.array([0])
    whole, corners, scales = normalise_clips(np.concatenate(clips), np.array(lengths))
    rows = np.split(whole.numpy(), np.cumsum(lengths)[:-1])
    cut = [clip[frames] for clip, frames in zip(clips, subsets)]
    extremes = body_extremes(torch.from_numpy(np.concatenate(clips)[:, PART_SLICES["body"]])).numpy()
    extremes = np.split(extremes, np.cumsum(lengths)[:-1])
    got, got_scales = rebox_clips(np.concatenate([r[f] for r, f in zip(rows, subsets)]),
                                  np.concatenate([e[f] for e, f in zip(extremes, subsets)]),
                                  np.array([len(f) for f in subsets]), corners.numpy(), scales.numpy())
    ref, _, ref_scales = normalise_clips(np.concatenate(cut), np.array([len(f) for f in subsets]))
    assert torch.equal(got_scales, ref_scales)
    assert (got_scales[0] == 0) == (unconfident_subset and lengths[0] > 1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    same, same_scales = rebox_clips(whole.numpy().copy(), np.concatenate(extremes),
                                    np.array(lengths), corners.numpy(), scales.numpy())
    assert torch.equal(same, whole) and torch.equal(same_scales, scales)


def test_sample_frame_indices():
    np.testing.assert_array_equal(sample_frame_indices(5, 8), np.arange(5))
    even = sample_frame_indices(1000, 256)
    assert len(even) == 256 and even[0] == 0 and even[-1] == 999
    np.testing.assert_array_equal(even, sample_frame_indices(1000, 256))  # deterministic eval
    for n in range(257, 600, 37):
        idx = sample_frame_indices(n, 256)
        assert len(np.unique(idx)) == 256 and (np.diff(idx) > 0).all()
    rand = sample_frame_indices(1000, 256, np.random.default_rng(0))
    assert len(np.unique(rand)) == 256 and (np.diff(rand) > 0).all()
    assert not np.array_equal(rand, sample_frame_indices(1000, 256, np.random.default_rng(1)))
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_indices(0, 256)


# ----------------------------------------------------------------------------------- samplers

def test_eval_shards_cover_every_sample_once(monkeypatch):
    shards = []
    for rank in range(3):
        monkeypatch.setattr(batches, "rank_and_world", lambda r=rank: (r, 3))
        sampler = ShardSampler(10, shuffle=False)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    assert sorted(i for s in shards for i in s) == list(range(10))


def test_train_shards_equal_disjoint_and_seeded(monkeypatch):
    def epoch_order(rank, epoch, seed=0):
        monkeypatch.setattr(batches, "rank_and_world", lambda: (rank, 3))
        sampler = ShardSampler(10, shuffle=True, seed=seed, epoch_fn=lambda: epoch)
        keys = list(sampler)
        assert len(keys) == len(sampler) == 3 and all(k[1] == epoch for k in keys)
        return [k[0] for k in keys]

    shards = [epoch_order(r, 0) for r in range(3)]
    assert len({i for s in shards for i in s}) == 9  # disjoint; one sample waits
    assert epoch_order(1, 0) == shards[1]  # depends only on seed and epoch
    assert [epoch_order(r, 1) for r in range(3)] != shards
    assert [epoch_order(r, 0, seed=5) for r in range(3)] != shards


# -------------------------------------------------------------------------- the DataModule

def test_translation_batch_contract(csl):
    dm = _dm(csl, batch_size=3, max_len=8)
    assert dm.tokenizer.pad_token_id == 0 and dm.language == "zh"
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    B, T = 3, 8  # dev lengths 6, 300 (-> 8 sampled), 2
    for part, nodes in {"body": 9, "left": 21, "right": 21, "face": 18}.items():
        assert batch[part].shape == (B, T, nodes, 3) and batch[part].dtype == torch.float32
        assert batch[part].abs().max() <= 1
    assert batch["frame_mask"].dtype == torch.bool
    assert batch["frame_mask"].sum(1).tolist() == [6, 8, 2]
    # padding repeats the last real frame (Uni-Sign's collate)
    assert torch.equal(batch["body"][2, 2:], batch["body"][2, 1:2].expand(6, 9, 3))
    assert batch["name"] == ["Sdev000_P0000_T00", "Sdev001_P0000_T00", "Sdev002_P0000_T00"]
    assert batch["text"] == TEXTS[:3] and batch["gloss"][0] == ["你们", "好"]
    ids, mask = batch["target_ids"], batch["target_mask"]
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    lengths = mask.sum(1)
    assert lengths.tolist() == [len(t) + 1 for t in TEXTS[:3]]  # characters + eos
    assert (ids[torch.arange(B), lengths - 1] == dm.tokenizer.eos_token_id).all()
    assert (ids[~mask] == dm.tokenizer.pad_token_id).all()
    assert dm.tokenizer.decode(ids[0], skip_special_tokens=True) == TEXTS[0]


def test_long_targets_are_truncated_and_still_end_with_eos(csl):
    dm = _dm(csl, batch_size=3, max_len=8, max_target_len=3)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    ids, lengths = batch["target_ids"], batch["target_mask"].sum(1)
    assert lengths.tolist() == [min(len(t) + 1, 3) for t in TEXTS[:3]]
    assert (ids[torch.arange(3), lengths - 1] == dm.tokenizer.eos_token_id).all()


def test_eval_is_deterministic_and_train_varies_by_epoch(csl):
    dm = _dm(csl, batch_size=3, max_len=8)
    dm.setup()
    a, b = next(iter(dm.val_dataloader())), next(iter(dm.val_dataloader()))
    assert torch.equal(a["body"], b["body"])
    train = dm.datasets["train"]
    assert torch.equal(train[(1, 0)]["nodes"], train[(1, 0)]["nodes"])
    assert len(train[(1, 0)]["nodes"]) == 8  # 9 frames -> sorted random 8
    assert any(not torch.equal(train[(1, 0)]["nodes"], train[(1, e)]["nodes"]) for e in range(1, 5))
    names = [n for batch in dm.train_dataloader() for n in batch["name"]]
    assert sorted(names) == sorted(r["name"] for r in train.records)


def test_missing_pose_file_raises_at_setup_or_is_skipped(csl):
    (csl[1] / "Strain002_P0000_T00.pkl").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels\.train: sample 'Strain002_P0000_T00'"):
        _dm(csl).setup("fit")
    dm = _dm(csl, on_bad_sample="skip")
    dm.setup("fit")
    assert dm.skipped == {"missing": ["Strain002_P0000_T00"]} and dm.num_skipped == 1
    assert len(dm.datasets["train"]) == 4


@pytest.mark.parametrize("content, reason", [
    (b"\x80\x04garbage", "invalid"),
    (pickle.dumps({"keypoints": np.full((3, 1, 133, 2), np.inf), "scores": np.ones((3, 1, 133))}),
     "invalid"),
    (pickle.dumps({"keypoints": np.zeros((3, 1, 133, 2)), "scores": np.full((3, 1, 133), 0.1)}),
     "low_score"),
    (pickle.dumps({"keypoints": [[[[10**400, 0.5]] * 133]] * 3, "scores": np.ones((3, 1, 133))}), "invalid"),
    (V8_FORGERY, "unsafe"),
], ids=["corrupt", "non_finite", "unconfident", "overflow", "void_dtype_forgery"])
def test_bad_pose_content_names_sample_or_is_skipped(csl, content, reason):
    (csl[1] / "Sdev001_P0000_T00.pkl").write_bytes(content)
    dm = _dm(csl, batch_size=3)
    dm.setup("validate")
    with pytest.raises(BadSampleError, match=r"sample 'Sdev001_P0000_T00': .*Sdev001_P0000_T00\.pkl"):
        next(iter(dm.val_dataloader()))
    dm = _dm(csl, batch_size=3, num_workers=1)  # the message survives the worker process
    dm.setup("validate")
    with pytest.raises(BadSampleError, match=r"sample 'Sdev001_P0000_T00'"):
        next(iter(dm.val_dataloader()))
    dm = _dm(csl, batch_size=3, on_bad_sample="skip", num_workers=1)
    dm.setup("validate")
    batch = dm.on_before_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert batch["name"] == ["Sdev000_P0000_T00", "Sdev002_P0000_T00"] and "skipped" not in batch
    assert batch["body"].shape[0] == 2 and batch["target_ids"].shape[0] == 2
    assert dm.skipped == {reason: ["Sdev001_P0000_T00"]}


@pytest.mark.parametrize("field, value", [("video_path", 5), ("text", ""), ("length", [[[3]]])])
def test_a_malformed_label_entry_is_a_bad_sample(csl, field, value):
    label_dir = csl[0]
    labels = pickle.loads(gzip.decompress((label_dir / "labels.dev").read_bytes()))
    labels["Sdev001_P0000_T00"][field] = value
    (label_dir / "labels.dev").write_bytes(gzip.compress(pickle.dumps(labels)))
    with pytest.raises(ValueError, match=rf"labels\.dev: sample 'Sdev001_P0000_T00' .*'{field}'"):
        _dm(csl).setup("validate")
    dm = _dm(csl, batch_size=3, on_bad_sample="skip")
    dm.prepare_data()
    dm.setup("validate")
    assert dm.skipped == {"invalid": ["Sdev001_P0000_T00"]}
    assert next(iter(dm.val_dataloader()))["name"] == ["Sdev000_P0000_T00", "Sdev002_P0000_T00"]


def test_label_problems_fail_at_setup(csl):
    label_dir = csl[0]
    good_dev = (label_dir / "labels.dev").read_bytes()
    (label_dir / "labels.dev").write_bytes(gzip.compress(pickle.dumps(
        {"X": {"name": "X", "gloss": [], "video_path": "X.mp4"}})))
    with pytest.raises(ValueError, match=r"labels\.dev: sample 'X' has no 'text'"):
        _dm(csl).setup("validate")
    (label_dir / "labels.dev").write_bytes(good_dev)
    (label_dir / "labels.test").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels\.test"):
        _dm(csl).setup("test")  # test evaluates dev and test; the missing test split fails setup


def test_test_stage_evaluates_dev_then_test(csl):
    dm = _dm(csl)
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert dm.test_splits == ("dev", "test") and len(loaders) == 2
    assert [len(loader.dataset) for loader in loaders] == [len(dm.datasets["dev"]), len(dm.datasets["test"])]


def test_phoenix_pose_path_uses_name_with_split(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "poses" / "dev").mkdir(parents=True)
    labels = {}
    for i in range(2):
        name = f"dev/clip-{i}"
        labels[name] = {"name": name, "gloss": "REGEN MORGEN", "text": "es regnet", "length": 4,
                        "imgs_path": []}
        (tmp_path / "poses" / f"{name}.pkl").write_bytes(pickle.dumps(make_pose(4, rng)))
    (tmp_path / "labels.dev").write_bytes(gzip.compress(pickle.dumps(labels)))
    build_word_level_tokenizer(["es regnet"], "de").backend_tokenizer.save(str(tmp_path / "t.json"))
    dm = SignTranslationDataModule(dataset="phoenix2014t", label_dir=str(tmp_path),
                                   pose_dir=str(tmp_path / "poses"), tokenizer=str(tmp_path / "t.json"))
    assert dm.language == "de"
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["name"] == ["dev/clip-0", "dev/clip-1"]
    assert batch["gloss"][0] == ["REGEN", "MORGEN"]


def test_constructor_rejects_bad_arguments(csl):
    with pytest.raises(ValueError, match="dataset must be one of"):
        SignTranslationDataModule(dataset="wlasl")
    with pytest.raises(ValueError, match="needs label_dir and pose_dir"):
        SignTranslationDataModule(dataset="csl_daily", tokenizer=csl[2])
    with pytest.raises(ValueError, match="on_bad_sample"):
        _dm(csl, on_bad_sample="ignore")


def test_synthsign_corpus_through_the_real_readers(tmp_path):
    dm = SignTranslationDataModule(data_dir=str(tmp_path / "synthsign"), batch_size=2,
                                   synthsign_kwargs={"num_train": 4, "num_dev": 3, "num_test": 2})
    dm.prepare_data()
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "dev", "test")] == [4, 3, 2]
    for batch in dm.val_dataloader():
        assert (batch["target_ids"] != dm.tokenizer.unk_token_id).all()  # tokenizer covers corpus
        assert dm.tokenizer.batch_decode(batch["target_ids"], skip_special_tokens=True) == batch["text"]
        assert batch["body"].abs().max() <= 1 and batch["frame_mask"].any(1).all()


def test_normalising_an_empty_clip_is_refused_not_merged_with_its_neighbour():
    """Crop boxes reduce each clip's segment of frames; an empty segment would silently take the
    next clip's first frame, so it is refused with the lengths named."""
    nodes = np.random.default_rng(0).uniform(0.3, 0.7, (5, 69, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"at least one frame, got lengths \[2, 0, 3\]"):
        normalise_clips(nodes, np.array([2, 0, 3]))
    extremes = body_extremes(torch.from_numpy(nodes[:, PART_SLICES["body"]])).numpy()
    with pytest.raises(ValueError, match="at least one frame"):
        rebox_clips(nodes.copy(), extremes, np.array([5, 0]), np.zeros((2, 2), np.float32), np.ones(2, np.float32))


@pytest.mark.parametrize("packed", [True, False])
def test_pose_format_files_are_read_where_a_pickle_would_be(csl, packed):
    """A dataset of `.pose` files (pose-format's COCO-WholeBody layout) gives the batches its
    pickles give; where both exist the pickle is read."""
    pose_format = pytest.importorskip("pose_format", reason="the `pose-format` extra is not installed")
    from pose_format.numpy.pose_body import NumPyPoseBody
    from pose_format.pose_header import PoseHeader, PoseHeaderDimensions
    from pose_format.utils.cocowholebody133_header import cocowholebody_components

    label_dir, pose_dir, tok = csl
    reference = _dm(csl, batch_size=3, max_len=8, packed=packed)
    reference.setup("fit")
    expected = next(iter(reference.val_dataloader()))
    width, height = 640, 480  # pose-format stores pixels; the reader divides by the header's size
    for pkl in sorted(pose_dir.glob("Sdev*.pkl")):
        pose = pickle.loads(pkl.read_bytes())
        pixels = np.asarray(pose["keypoints"], np.float32) * [width, height]  # (T, 1, 133, 2)
        header = PoseHeader(version=0.2, dimensions=PoseHeaderDimensions(width, height, 0),
                            components=cocowholebody_components())
        body = NumPyPoseBody(fps=25, data=pixels, confidence=np.asarray(pose["scores"], np.float32))
        with open(pkl.with_suffix(".pose"), "wb") as f:
            pose_format.Pose(header, body).write(f)
        pkl.unlink()
    (pose_dir / "Sdev000_P0000_T00.pkl").write_bytes(b"not a pickle")  # both: the pickle wins
    dm = _dm(csl, batch_size=3, max_len=8, packed=packed, on_bad_sample="skip")
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["name"] == expected["name"][1:]  # Sdev000 is skipped: its (bad) pickle was read
    for key in ("body", "left", "right", "face", "frame_mask"):
        torch.testing.assert_close(batch[key], expected[key][1:], rtol=0, atol=2e-6)


# -------------------------------------------------------------------------- real-dataset handling


def test_a_partial_dataset_gives_one_summary_line_and_the_full_list_in_a_file(tmp_path, caplog):
    import logging

    label_dir, pose_dir, tok = _write_csl(tmp_path, {"train": [3] * 30, "dev": [3, 3]}, np.random.default_rng(1))
    missing = sorted(pose_dir.glob("Strain*.pkl"))[2:]
    for path in missing:
        path.unlink()
    dm = _dm((label_dir, pose_dir, tok), on_bad_sample="skip", packed=False)
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        dm.setup("fit")
    lines = [r.getMessage() for r in caplog.records if "skip" in r.getMessage()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("train split: 2 samples kept, skipping 28 (missing 28): Strain002_P0000_T00, ")
    assert line.count("Strain") == 5 and ", ..." in line
    assert str(dm.skip_file) in line and dm.skip_file.parent != label_dir  # no trainer: a temporary file
    rows = dm.skip_file.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "name\treason\tmessage" and len(rows) == 29
    assert [row.split("\t")[0] for row in rows[1:]] == [p.stem for p in missing]
    assert all(row.split("\t")[1] == "missing" and "not found" in row for row in rows[1:])
    dm.skip_file.unlink()


def test_batch_time_skips_are_summarised_and_capped(csl, caplog, monkeypatch):
    import logging

    import datamodules.batches as batches

    label_dir, pose_dir, tok = csl
    for path in pose_dir.glob("Strain*.pkl"):
        path.write_bytes(b"\x80\x04garbage")
    monkeypatch.setattr(batches, "SKIP_LOG_LINES", 2)
    dm = _dm(csl, on_bad_sample="skip", packed=False, batch_size=1)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        for _ in dm.train_dataloader():
            pass
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping ")]
    assert len(lines) == 2 and "further skips are only written there" in lines[1]  # 5 bad samples, 2 lines
    rows = dm.skip_file.read_text(encoding="utf-8").splitlines()[1:]
    assert sorted(row.split("\t")[0] for row in rows) == sorted(p.stem for p in pose_dir.glob("Strain*.pkl"))
    assert all(row.split("\t")[1] == "invalid" for row in rows)
    dm.skip_file.unlink()


def test_cache_dir_gives_a_read_only_dataset_the_packed_path(csl, tmp_path):
    import os

    label_dir, pose_dir, _ = csl
    before = sorted(p.name for p in label_dir.iterdir())
    for folder in (label_dir, pose_dir):
        folder.chmod(0o555)
    try:
        if os.geteuid() != 0:  # root writes into a read-only folder anyway
            default = _dm(csl)
            default.prepare_data()
            default.setup("fit")
            assert default.datasets["train"].poses is None  # the slow pickle path
        cache = tmp_path / "cache"
        dm = _dm(csl, cache_dir=str(cache))
        dm.prepare_data()
        dm.setup("fit")
        assert dm.datasets["train"].poses is not None and dm.datasets["dev"].poses is not None
        assert dm.cache_dir.parent == cache and dm.cache_dir.name.startswith("labels-")
        assert (dm.cache_dir / "train.index.json").is_file()
        assert sorted(p.name for p in label_dir.iterdir()) == before  # nothing written beside the labels
        reference = _dm(csl, packed=False)
        reference.setup("fit")
        got, expected = next(iter(dm.val_dataloader())), next(iter(reference.val_dataloader()))
        assert got["name"] == expected["name"]
        torch.testing.assert_close(got["body"], expected["body"], rtol=0, atol=1e-6)
    finally:
        for folder in (label_dir, pose_dir):
            folder.chmod(0o755)


def test_one_cache_dir_serves_two_datasets(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _write_csl(tmp_path / "a", {"train": [3, 4], "dev": [3]}, np.random.default_rng(2))
    second = _write_csl(tmp_path / "b", {"train": [5], "dev": [3, 3]}, np.random.default_rng(3))
    dms = [_dm(csl, cache_dir=str(tmp_path / "cache")) for csl in (first, second)]
    assert dms[0].cache_dir != dms[1].cache_dir  # both label folders are called "labels"
    for dm in dms:
        dm.prepare_data()
    for dm, count in zip(dms, (2, 1)):
        dm.setup("fit")
        assert dm.datasets["train"].poses is not None and len(dm.datasets["train"]) == count
