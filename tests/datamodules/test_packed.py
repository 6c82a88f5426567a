"""The packed pose cache gives the pickle path's batches (bit for bit for clips kept whole),
rebuilds on changed sources and reports bad samples the same way."""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from datamodules.batches import BadSampleError
from datamodules.formats import read_pose_pickle, read_unisign_labels
from datamodules.keypoints import PART_SLICES, body_extremes, normalise_clips, part_nodes
from datamodules.packed import PackedCacheError, PackedPoses, build_packed, ensure_packed, paths
from tests.datamodules.csl_daily import assert_same_batches as _assert_same
from tests.datamodules.csl_daily import csl_datamodule as _dm
from tests.datamodules.csl_daily import make_pose


def _batches(dm, split: str, epoch: int = 0) -> list[dict]:
    if split == "train":
        loader = dm.train_dataloader()
        loader.sampler.epoch_fn = lambda: epoch  # what the trainer's current epoch would say
        return list(loader)
    return list(dm.val_dataloader())


@pytest.mark.parametrize("max_len", [4, 400])
def test_packed_batches_equal_pickle_batches(csl, max_len):
    packed = _dm(csl, batch_size=2, max_len=max_len, seed=3)
    packed.prepare_data()
    packed.setup()
    plain = _dm(csl, batch_size=2, max_len=max_len, seed=3, packed=False)
    plain.setup()
    assert all(packed.datasets[s].poses is not None for s in ("train", "dev", "test"))
    assert all(plain.datasets[s].poses is None for s in ("train", "dev", "test"))
    # max_len 4 cuts train clips of 5, 9 and 7 frames to random subsets (drawn the same way) and
    # dev clips of 6 and 300 frames to evenly spaced frames; 400 keeps every clip whole: bit-identical
    whole = None if max_len == 400 else {"Strain002_P0000_T00", "Strain004_P0000_T00", "Sdev002_P0000_T00"}
    for epoch in (0, 1):
        _assert_same(_batches(packed, "train", epoch), _batches(plain, "train", epoch), whole)
    _assert_same(_batches(packed, "dev"), _batches(plain, "dev"), whole)


def test_cache_holds_normalised_clips_and_box_extremes_in_label_order(csl):
    label_dir, pose_dir, _ = csl
    dm = _dm(csl)
    dm.prepare_data()
    array_paths, _ = paths(label_dir / "packed", "dev")
    shapes = {key: np.load(path).shape for key, path in array_paths.items()}
    assert shapes == {"nodes": (6 + 300 + 2, 69, 3), "extremes": (6 + 300 + 2, 5)}
    poses = PackedPoses.open(label_dir / "packed", "dev", label_dir / "labels.dev",
                             [pose_dir / f"Sdev00{i}_P0000_T00.pkl" for i in range(3)])
    assert [entry[:2] for entry in poses.samples.values()] == [[0, 6], [6, 300], [306, 2]]
    assert list(poses.samples) == ["Sdev000_P0000_T00", "Sdev001_P0000_T00", "Sdev002_P0000_T00"]
    clip = poses.read("Sdev001_P0000_T00")
    raw = part_nodes(*read_pose_pickle(pose_dir / "Sdev001_P0000_T00.pkl"))  # (T, 69, 3)
    normalised, corner, scale = normalise_clips(raw, np.array([300]))
    assert np.array_equal(clip.nodes, normalised.numpy())
    assert np.array_equal(clip.extremes, body_extremes(torch.from_numpy(raw[:, PART_SLICES["body"]])).numpy())
    assert clip.corner == tuple(corner[:, 0].tolist()) and clip.scale == scale.item() > 0
    # workers get the paths, not a pickled copy of the arrays
    clone = pickle.loads(pickle.dumps(poses))
    assert clone._arrays is None
    assert np.array_equal(clone.read("Sdev000_P0000_T00").nodes, poses.read("Sdev000_P0000_T00").nodes)


def test_items_of_whole_clips_alias_the_map_but_writes_never_reach_the_file(csl):
    """Clips kept whole go to the collate as views of the memory map (no copy on the way); a user
    writing into an item changes only a private copy of the page, never the cache."""
    dm = _dm(csl, max_len=400)
    dm.prepare_data()
    dm.setup()
    array_path = paths(csl[0] / "packed", "train")[0]["nodes"]
    before = array_path.read_bytes()
    dataset = dm.datasets["train"]
    item = dataset[0]
    original = item["nodes"].clone()
    assert np.shares_memory(item["nodes"].numpy(), dataset.poses.arrays()["nodes"])
    item["nodes"].fill_(7.0)
    assert array_path.read_bytes() == before
    fresh = _dm(csl, max_len=400)
    fresh.setup()
    assert torch.equal(fresh.datasets["train"][0]["nodes"], original)


def test_rebuilt_only_when_sources_change(csl):
    label_dir, pose_dir, _ = csl
    dm = _dm(csl, max_len=400)
    dm.prepare_data()
    cache, label_path = label_dir / "packed", label_dir / "labels.dev"
    samples = [(f"Sdev00{i}_P0000_T00", pose_dir / f"Sdev00{i}_P0000_T00.pkl") for i in range(3)]
    assert not ensure_packed(cache, "dev", label_path, samples)  # fresh: nothing to do
    # a replaced pose file (new content, new mtime) makes the cache stale: setup falls back ...
    new_pose = make_pose(11, np.random.default_rng(5))
    samples[2][1].write_bytes(pickle.dumps(new_pose))
    os.utime(samples[2][1], ns=(1, 1))
    dm = _dm(csl, max_len=400)
    dm.setup("validate")
    assert dm.datasets["dev"].poses is None
    # ... and prepare_data rebuilds it with the new frames
    dm.prepare_data()
    dm = _dm(csl, max_len=400)
    dm.setup("validate")
    poses = dm.datasets["dev"].poses
    assert poses is not None and poses.samples["Sdev002_P0000_T00"][:2] == [306, 11]
    raw = part_nodes(new_pose["keypoints"][:, 0], new_pose["scores"][:, 0])
    assert np.array_equal(poses.read("Sdev002_P0000_T00").nodes, normalise_clips(raw, np.array([11]))[0].numpy())
    os.utime(label_path)  # a touched label file counts too
    assert ensure_packed(cache, "dev", label_path, samples)
    assert not list(cache.glob("*.tmp-*"))  # temporaries renamed or removed


@pytest.mark.parametrize("content, reason", [
    (b"\x80\x04garbage", "invalid"),
    (pickle.dumps({"keypoints": np.full((3, 1, 133, 2), np.inf), "scores": np.ones((3, 1, 133))}), "invalid"),
    (pickle.dumps({"keypoints": np.zeros((3, 1, 133, 2)), "scores": np.full((3, 1, 133), 0.1)}), "low_score"),
    (b"\x80\x04cos\nsystem\n.", "unsafe"),
], ids=["corrupt", "non_finite", "unconfident", "unsafe"])
def test_bad_samples_reported_like_the_pickle_path(csl, content, reason):
    (csl[1] / "Sdev001_P0000_T00.pkl").write_bytes(content)
    messages = {}
    for packed in (True, False):
        dm = _dm(csl, batch_size=3, packed=packed)
        dm.prepare_data()  # packing does not fail on a bad sample: it is reported when loaded
        dm.setup("validate")
        assert (dm.datasets["dev"].poses is not None) == packed
        with pytest.raises(BadSampleError, match=r"sample 'Sdev001_P0000_T00': .*Sdev001_P0000_T00\.pkl") as err:
            next(iter(dm.val_dataloader()))
        messages[packed] = str(err.value)
        dm = _dm(csl, batch_size=3, packed=packed, on_bad_sample="skip", num_workers=1)
        dm.setup("validate")
        batch = dm.on_before_batch_transfer(next(iter(dm.val_dataloader())), 0)
        assert batch["name"] == ["Sdev000_P0000_T00", "Sdev002_P0000_T00"]
        assert dm.skipped == {reason: ["Sdev001_P0000_T00"]}
    assert messages[True] == messages[False]


def test_phoenix_names_with_split_prefix(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "poses" / "dev").mkdir(parents=True)
    samples = []
    for i in range(2):
        path = tmp_path / "poses" / "dev" / f"clip-{i}.pkl"
        path.write_bytes(pickle.dumps(make_pose(4 + i, rng)))
        samples.append((f"dev/clip-{i}", path))
    (tmp_path / "labels.dev").write_bytes(b"labels")
    index = build_packed(tmp_path / "packed", "dev", tmp_path / "labels.dev", samples)
    assert {name: entry[:2] for name, entry in index["samples"].items()} == {"dev/clip-0": [0, 4], "dev/clip-1": [4, 5]}
    assert index["errors"] == {}


@pytest.mark.parametrize("key", ["nodes", "extremes"])
def test_array_that_disagrees_with_its_index_names_the_file(csl, key):
    label_dir = csl[0]
    _dm(csl).prepare_data()
    dm = _dm(csl, packed=True, on_bad_sample="skip")
    dm.setup("test")
    array_path = paths(label_dir / "packed", "test")[0][key]
    np.save(array_path, np.zeros((2, 133, 3), np.float32))  # changed after this run verified it
    with pytest.raises(PackedCacheError, match=re.escape(str(array_path))):
        dm.datasets["test"].poses.arrays()
    with pytest.raises(PackedCacheError, match="rebuilt"):  # every sample is affected: never a skip
        next(iter(dm.test_dataloader()[1]))  # (dev, test)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "deleted"])
def test_a_damaged_cache_is_a_cache_error_never_a_skip(csl, damage):
    label_dir = csl[0]
    _dm(csl).prepare_data()
    array_path = paths(label_dir / "packed", "dev")[0]["nodes"]
    raw = bytearray(array_path.read_bytes())
    if damage == "flipped byte":
        raw[len(raw) // 2] ^= 0x04
        array_path.write_bytes(bytes(raw))
    elif damage == "truncated":
        array_path.write_bytes(bytes(raw[: len(raw) - 100]))
    else:
        array_path.unlink()
    dm = _dm(csl, on_bad_sample="skip")
    if damage == "deleted":  # an index without its arrays is no cache: the pickles are read
        dm.setup("validate")
        assert dm.datasets["dev"].poses is None
    else:
        with pytest.raises(PackedCacheError, match=re.escape(str(array_path)) + ".*checksum"):
            dm.setup("validate")
    assert dm.skipped == {}
    assert ensure_packed(label_dir / "packed", "dev", label_dir / "labels.dev",
                         dm._pose_paths(read_unisign_labels(label_dir / "labels.dev")))  # rebuilt ...
    fresh = _dm(csl, on_bad_sample="skip")
    fresh.setup("validate")  # ... and intact again
    assert fresh.datasets["dev"].poses is not None and len(list(fresh.val_dataloader())) > 0


def test_changed_content_with_size_and_mtime_restored_is_stale(csl):
    label_dir, pose_dir, _ = csl
    _dm(csl, max_len=400).prepare_data()
    path = pose_dir / "Sdev000_P0000_T00.pkl"
    before = path.stat()
    original = path.read_bytes()
    pose = pickle.loads(original)  # the test's own file
    changed = pickle.dumps({**pose, "keypoints": pose["keypoints"] * 0.5 + 0.25})
    assert len(changed) == len(original)  # same size ...
    path.write_bytes(changed)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # ... and mtime: only ctime tells
    dm = _dm(csl, max_len=400)
    dm.setup("validate")
    assert dm.datasets["dev"].poses is None  # stale: the new content is read from the pickle
    dm.prepare_data()
    dm = _dm(csl, max_len=400)
    dm.setup("validate")
    clip = dm.datasets["dev"].poses.read("Sdev000_P0000_T00")
    raw = part_nodes(*read_pose_pickle(path))
    assert np.array_equal(clip.nodes, normalise_clips(raw, np.array([len(raw)]))[0].numpy())


def test_a_rebuild_writes_a_new_generation_and_removes_the_old(csl):
    label_dir, pose_dir, _ = csl
    _dm(csl).prepare_data()
    cache = label_dir / "packed"
    old = paths(cache, "dev")[0]
    dm = _dm(csl)
    dm.setup("validate")
    reader = dm.datasets["dev"].poses  # opened the old generation, maps it lazily
    samples = [(f"Sdev00{i}_P0000_T00", pose_dir / f"Sdev00{i}_P0000_T00.pkl") for i in range(3)]
    build_packed(cache, "dev", label_dir / "labels.dev", samples)
    new = paths(cache, "dev")[0]
    assert set(old.values()).isdisjoint(new.values()) and all(p.is_file() for p in new.values())
    assert not any(p.exists() for p in old.values())
    with pytest.raises(PackedCacheError, match="rebuilt"):  # never the new generation's frames under the old index
        reader.read("Sdev000_P0000_T00")


def test_a_read_error_that_may_pass_aborts_the_build_and_is_not_stored(csl, monkeypatch, caplog):
    import datamodules.packed as packed

    def denied(path):
        raise PermissionError(f"{path}: Permission denied")

    monkeypatch.setattr(packed, "read_poses", denied)
    dm = _dm(csl)
    dm.prepare_data()  # logs and carries on: the run reads pickles
    assert "cannot build the packed pose cache" in caplog.text and "Permission denied" in caplog.text
    assert list((csl[0] / "packed").iterdir()) == []  # no index, no temporaries
    monkeypatch.undo()
    dm.prepare_data()  # the cause fixed, the next build stores no stale error
    dm.setup("test")
    assert dm.datasets["test"].poses is not None and dm.datasets["test"].poses.errors == {}


def test_a_killed_build_leaves_no_temporaries_behind_the_next_one(csl):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid no process has any more
    cache = csl[0] / "packed"
    cache.mkdir()
    dead = [cache / f"dev.npy.tmp-{gone}-0a1b2c3d", cache / f"dev.index.json.tmp-{gone}-0a1b2c3d"]
    live = cache / f"dev.npy.tmp-{os.getpid()}-4e5f6a7b"  # a build still running (this process)
    for path in (*dead, live):
        path.write_bytes(b"partial")
    _dm(csl).prepare_data()
    assert not any(path.exists() for path in dead) and live.exists()


def test_synthsign_prepare_data_packs_beside_the_corpus(tmp_path):
    from datamodules.translation import SignTranslationDataModule

    kwargs = dict(data_dir=str(tmp_path / "synthsign"), batch_size=2,
                  synthsign_kwargs={"num_train": 3, "num_dev": 2, "num_test": 2})
    dm = SignTranslationDataModule(**kwargs)
    dm.prepare_data()
    dm.prepare_data()  # the corpus check still passes with the cache beside pose_format
    names = sorted(p.name for p in (tmp_path / "synthsign" / "unisign" / "packed").iterdir())
    assert [re.sub(r"\.[0-9a-f]{16}\.", ".<gen>.", name) for name in names] == [
        f"{s}.{ext}" for s in ("dev", "test", "train") for ext in ("<gen>.extremes.npy", "<gen>.npy", "index.json")]
    dm.setup()
    plain = SignTranslationDataModule(**kwargs, packed=False)
    plain.setup()
    assert dm.datasets["dev"].poses is not None
    _assert_same(list(dm.val_dataloader()), list(plain.val_dataloader()))
