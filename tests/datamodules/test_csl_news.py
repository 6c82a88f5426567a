"""CSL-News reader: Uni-Sign's JSON and split, w_h pickles, SynthSign in its layout, the batches."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from datamodules.batches import BadSampleError
from datamodules.csl_news import (CSLNewsDataModule, read_csl_news_labels, split_bounds, write_split_labels,
                                  write_synthsign_csl_news)
from datamodules.formats import load_pickle
from datamodules.translation import SignTranslationDataModule
from tests.datamodules.csl_daily import assert_same_batches

SYNTH = {"num_train": 9, "num_dev": 3, "num_test": 2}  # 14 entries: Uni-Sign's cut at int(13.86) = 13


@pytest.mark.parametrize("count", [1, 14, 100, 101, 250_000, 1_234_567])
def test_split_is_uni_signs_last_one_percent(count):
    # S2T_Dataset_news: train [int(N * 0.0), int(N * 0.99)), dev/test [int(N * 0.99), N)
    bounds = split_bounds(count)
    assert bounds["train"] == range(0, int(count * 0.99)) and bounds["dev"] == range(int(count * 0.99), count)
    assert bounds["test"] == bounds["dev"]


@pytest.fixture(scope="module")
def synth_news(tmp_path_factory):
    """A tiny SynthSign corpus written in CSL-News's layout through the DataModule (synthsign: true)."""
    root = tmp_path_factory.mktemp("news")
    kwargs = dict(label_file=str(root / "news" / "CSL_News_Labels.json"), pose_dir=str(root / "news" / "pose_format"),
                  synthsign=True, data_dir=str(root / "synthsign"), synthsign_kwargs=SYNTH,
                  tokenizer="synthsign-zh", batch_size=4, max_len=16)
    dm = CSLNewsDataModule(**kwargs)
    dm.prepare_data()
    dm.setup()
    return root, kwargs, dm


def test_synthsign_in_csl_news_layout_reads_as_the_same_samples(synth_news):
    root, _, dm = synth_news
    entries = json.loads((root / "news" / "CSL_News_Labels.json").read_text(encoding="utf-8"))
    assert len(entries) == 14 and set(entries[0]) == {"video", "pose", "text"}
    pose = load_pickle(root / "news" / "pose_format" / entries[0]["pose"])
    assert pose["w_h"] == [1280, 720] and pose["keypoints"].max() <= 1  # normalised by w_h, as Uni-Sign's
    train, dev = dm.datasets["train"].records, dm.datasets["dev"].records
    assert [r["name"] for r in train] == [e["video"] for e in entries[:13]]
    assert [r["name"] for r in dev] == [entries[13]["video"]]  # the last 1%
    assert all(r["gloss"] == [] for r in train)  # CSL-News has no glosses
    assert dm.datasets["train"].poses is not None  # the packed cache of the parent DataModule
    # the same clips and texts as the Uni-Sign layout they came from, through the parent DataModule
    plain = SignTranslationDataModule(data_dir=str(root / "synthsign"), synthsign_kwargs=SYNTH, batch_size=4, max_len=16,
                                      packed=False)
    plain.setup()
    source = {r["name"]: r for r in plain.datasets["train"].records + plain.datasets["dev"].records
              + plain.datasets["test"].records}
    for record in train + dev:
        original = source[record["name"].removesuffix(".mp4")]
        assert (record["text"], record["target_ids"]) == (original["text"], original["target_ids"])
    batch = next(iter(dm.val_dataloader()))
    reference = plain.datasets["test"][len(plain.datasets["test"]) - 1]
    assert batch["name"] == [entries[13]["video"]]
    # a clip cut to max_len: the packed path reboxes it, the pickle path normalises it (float32 rounding)
    np.testing.assert_allclose(batch["body"][0].numpy(), reference["nodes"][:, :9].numpy(), rtol=0, atol=1e-6)


def test_packed_and_pickle_batches_agree(synth_news):
    _, kwargs, dm = synth_news
    plain = CSLNewsDataModule(**{**kwargs, "packed": False})
    plain.setup()
    loader, plain_loader = dm.train_dataloader(), plain.train_dataloader()
    loader.sampler.epoch_fn = plain_loader.sampler.epoch_fn = lambda: 1
    # clips longer than max_len are reboxed from the packed cache: float32 rounding, as test_packed
    whole = {r["name"] for r in dm.datasets["train"].records if len(load_pickle(r["pose_path"])["scores"]) <= 16}
    assert_same_batches(list(loader), list(plain_loader), whole)


def test_cache_dir_moves_the_packed_cache_out_of_the_split_folder(synth_news, tmp_path):
    root, kwargs, dm = synth_news
    moved = CSLNewsDataModule(**kwargs, cache_dir=str(tmp_path / "cache"))
    moved.prepare_data()
    moved.setup()
    assert moved.cache_dir.parent == tmp_path / "cache" and moved.cache_dir.name.startswith("signlab_splits-")
    assert (moved.cache_dir / "train.index.json").is_file() and moved.datasets["train"].poses is not None
    assert dm.cache_dir == root / "news" / "signlab_splits" / "packed"  # the default stays beside the splits
    first, moved_first = next(iter(dm.val_dataloader())), next(iter(moved.val_dataloader()))
    assert moved_first["name"] == first["name"] and moved_first["body"].equal(first["body"])


def test_splits_rewritten_only_when_the_json_changes(synth_news, tmp_path):
    root, _, _ = synth_news
    label_file = root / "news" / "CSL_News_Labels.json"
    assert not write_split_labels(label_file, root / "news" / "signlab_splits")  # fresh: the cache stays valid
    copy = tmp_path / "labels.json"
    entries = json.loads(label_file.read_text(encoding="utf-8"))
    copy.write_text(json.dumps(entries), encoding="utf-8")
    assert write_split_labels(copy, tmp_path / "splits")
    entries[0]["text"] = "改了"
    copy.write_text(json.dumps(entries), encoding="utf-8")
    os.utime(copy, ns=(1, 1))
    assert write_split_labels(copy, tmp_path / "splits")
    assert load_pickle(tmp_path / "splits" / "labels.train")[entries[0]["video"]]["text"] == "改了"


@pytest.mark.parametrize("content, match", [
    ("{}", "non-empty JSON list"),
    ("[]", "non-empty JSON list"),
    ('[{"video": "a.mp4", "text": "x"}]', "entry 0 is not an object with 'video' and 'pose'"),
    ('[{"video": "a.mp4", "pose": "a.pkl", "text": "x"}, {"video": "a.mp4", "pose": "b.pkl", "text": "y"}]',
     "entries 0 and 1 are both video 'a.mp4'"),
    ("[{", "not a JSON file"),
])
def test_malformed_label_files_name_the_file_and_entry(tmp_path, content, match):
    path = tmp_path / "CSL_News_Labels.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match) as err:
        read_csl_news_labels(path)
    assert str(path) in str(err.value)


def test_missing_text_and_unreadable_pose_go_through_on_bad_sample(tmp_path):
    src = tmp_path / "synthsign"
    from datamodules.synthetic import ensure_synthsign

    ensure_synthsign(src, **SYNTH)
    label_file = write_synthsign_csl_news(src / "unisign", tmp_path / "news")
    entries = json.loads(label_file.read_text(encoding="utf-8"))
    entries[1]["text"] = ""
    (tmp_path / "news" / "pose_format" / entries[2]["pose"]).write_bytes(pickle.dumps({"keypoints": 1}))
    label_file.write_text(json.dumps(entries), encoding="utf-8")
    kwargs = dict(label_file=str(label_file), pose_dir=str(tmp_path / "news" / "pose_format"),
                  tokenizer="synthsign-zh", batch_size=20)
    with pytest.raises(ValueError, match=f"sample {entries[1]['video']!r} has an empty 'text'"):
        CSLNewsDataModule(**kwargs).setup("fit")
    skipping = CSLNewsDataModule(**kwargs, on_bad_sample="skip")
    skipping.prepare_data()
    skipping.setup("fit")
    batches = list(skipping.train_dataloader())
    names = [name for batch in batches for name in batch["name"]]
    assert sorted(names) == sorted(e["video"] for e in entries[:13] if e not in (entries[1], entries[2]))
    assert skipping.skipped == {"invalid": [entries[1]["video"]]}  # the label, at setup
    # the pose file, when loaded (the trainer's on_before_batch_transfer records these)
    assert [entry[:2] for batch in batches for entry in batch.get("skipped", ())] == [(entries[2]["video"], "invalid")]
    with pytest.raises(BadSampleError, match=entries[2]["pose"]):
        raising = CSLNewsDataModule(**kwargs)
        entries[1]["text"] = "好"
        label_file.write_text(json.dumps(entries), encoding="utf-8")
        raising.setup("fit")
        list(raising.train_dataloader())
