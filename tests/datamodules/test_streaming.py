"""litdata streaming: conversion, the packed path's batches, mid-epoch resume, refusals."""
from __future__ import annotations

import json
import os
import shutil

import pytest

pytest.importorskip("litdata", reason="the `stream` extra (litdata) is not installed")

from datamodules.streaming import META, StreamError, StreamingTranslationDataModule, convert  # noqa: E402
from tests.datamodules.csl_daily import assert_same_batches as _assert_same  # noqa: E402

# 26 training samples: with batch 4 the epoch ends on a partial batch; max_len 16 cuts most clips
KW = dict(synthsign_kwargs={"num_train": 26, "num_dev": 5, "num_test": 2}, batch_size=4, max_len=16, seed=3)


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    kw = {**KW, "data_dir": str(root / "synth")}
    meta = convert(StreamingTranslationDataModule(**kw), root / "chunks", num_workers=1, chunk_bytes=20_000)
    assert meta["splits"] == {"train": 26, "dev": 5, "test": 2}
    return root, kw


def _streamed(kw, stream_dir, **more):
    dm = StreamingTranslationDataModule(**kw, **more, stream_dir=str(stream_dir))
    dm.setup("fit")
    return dm


def _drive(dm, epoch: int, consumed: int = 0):
    """Stand in for the trainer: its epoch and its count of finished batches (read through one
    lambda per DataModule, since a loader keeps the functions it was built with)."""
    if not hasattr(dm, "progress"):
        dm.progress = {}
        dm._current_epoch = lambda: dm.progress["epoch"]
        dm._consumed_batches = lambda: dm.progress["consumed"]
    dm.progress.update(epoch=epoch, consumed=consumed)


def test_streamed_batches_are_the_packed_paths_for_the_same_samples(stream):
    root, kw = stream
    dm = _streamed(kw, root / "chunks")
    packed = StreamingTranslationDataModule(**kw)  # no stream_dir: the parent DataModule, packed cache
    packed.prepare_data()
    packed.setup("fit")
    index = {r["name"]: i for i, r in enumerate(packed.datasets["train"].records)}
    orders = []
    for epoch in (0, 1):
        _drive(dm, epoch)
        batches = list(dm.train_dataloader())
        names = [name for batch in batches for name in batch["name"]]
        assert sorted(names) == sorted(index)  # one process: every sample once per epoch
        orders.append(names)
        for batch in batches:  # the packed path's items for the same (index, epoch), collated alike
            keys = [(index[name], epoch) for name in batch["name"]]
            _assert_same([batch], [packed.collate_fn(packed.datasets["train"].__getitems__(keys))])
    assert orders[0] != orders[1]  # reshuffled by epoch
    _assert_same(list(dm.val_dataloader()), list(packed.val_dataloader()))
    dm.setup("test")
    packed.setup("test")
    _assert_same(list(dm.test_dataloader()[1]), list(packed.test_dataloader()[1]))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_from_the_datamodule_state_continues_the_same_order(stream, num_workers):
    root, kw = stream
    whole = _streamed(kw, root / "chunks", num_workers=num_workers)
    _drive(whole, epoch=1)
    reference = [batch["name"] for batch in whole.train_dataloader()]
    _drive(whole, epoch=1, consumed=3)  # three batches trained when the checkpoint is written
    whole.trainer = object()
    state = json.loads(json.dumps(whole.state_dict()))  # what a checkpoint holds, as plain data
    assert state["stream"]["epoch"] == 1 and state["stream"]["batches"] == 3

    resumed = _streamed(kw, root / "chunks", num_workers=num_workers)
    resumed.load_state_dict(state)
    _drive(resumed, epoch=1, consumed=3)
    loader = resumed.train_dataloader()
    assert [batch["name"] for batch in loader] == reference[3:]
    _drive(resumed, epoch=2)  # the next epoch starts from its first batch, in the uninterrupted order
    _drive(whole, epoch=2)
    assert [b["name"] for b in loader] == [b["name"] for b in whole.train_dataloader()]


def test_a_mid_epoch_resume_without_the_stream_state_is_an_error(stream):
    root, kw = stream
    dm = _streamed(kw, root / "chunks")
    _drive(dm, epoch=0, consumed=2)
    with pytest.raises(StreamError, match="resuming mid-epoch at batch 2 of epoch 0"):
        next(iter(dm.train_dataloader()))


def test_chunks_of_another_config_are_refused_naming_the_difference(stream):
    root, kw = stream
    with pytest.raises(StreamError, match=r"another config.*'max_len': \(16, 32\)"):
        _streamed({**kw, "max_len": 32}, root / "chunks")
    with pytest.raises(StreamError, match=r"another config.*'max_target_len'"):
        _streamed({**kw, "max_target_len": 20}, root / "chunks")
    with pytest.raises(StreamError, match="another config"):  # converting into it is refused too
        convert(StreamingTranslationDataModule(**{**kw, "max_len": 32}), root / "chunks")


def test_missing_unfinished_or_empty_stream_dirs_name_the_place(stream, tmp_path):
    root, kw = stream
    with pytest.raises(StreamError, match=f"{tmp_path / 'nowhere' / META} not found"):
        _streamed(kw, tmp_path / "nowhere")
    shutil.copytree(root / "chunks", tmp_path / "partial")
    meta = json.loads((tmp_path / "partial" / META).read_text())
    del meta["splits"]["dev"]  # killed before dev finished
    (tmp_path / "partial" / META).write_text(json.dumps(meta))
    with pytest.raises(StreamError, match="split 'dev' is missing or its conversion unfinished"):
        _streamed(kw, tmp_path / "partial")
    meta["splits"]["dev"] = 0  # a config whose split had no samples
    (tmp_path / "partial" / META).write_text(json.dumps(meta))
    with pytest.raises(StreamError, match="split 'dev' is empty"):
        _streamed(kw, tmp_path / "partial")
    meta["splits"]["dev"] = 5
    (tmp_path / "partial" / META).write_text(json.dumps(meta))
    shutil.rmtree(tmp_path / "partial" / "train")  # chunks lost, or copied without them
    with pytest.raises(StreamError, match=f"{tmp_path / 'partial' / 'train'}: no index.json"):
        _streamed(kw, tmp_path / "partial")
    with pytest.raises(StreamError, match="only local folders and s3://"):
        _streamed(kw, "gs://bucket/x")


def test_a_rerun_conversion_skips_finished_splits(stream):
    root, kw = stream
    before = {p: p.stat().st_mtime_ns for p in (root / "chunks").rglob("*.bin")}
    convert(StreamingTranslationDataModule(**kw), root / "chunks", num_workers=1)
    assert {p: p.stat().st_mtime_ns for p in (root / "chunks").rglob("*.bin")} == before
    assert os.path.getsize(root / "chunks" / META) > 0


def test_benchmark_quick_writes_json(tmp_path):
    from benchmarks import streaming as bench

    bench.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "streaming.json").read_text())
    assert {(r["path"], r["workers"]) for r in result["rows"]} == {(p, w) for p in ("packed", "streaming") for w in (0, 2)}
    assert all(r["samples_per_s"] > 0 and r["bytes_per_frame"] > 0 for r in result["rows"])
    assert result["splits"]["train"] == result["samples"] == 40


def test_a_conversion_whose_worker_is_killed_resumes_from_the_last_whole_block(tmp_path, monkeypatch):
    from datamodules import streaming

    kw = {**KW, "data_dir": str(tmp_path / "synth")}
    original = streaming._Item.__call__

    def dies_at_20(self, index):  # litdata's forked worker is SIGKILLed at sample 20 (out of memory, say)
        if index == 20:
            os.kill(os.getpid(), 9)
        return original(self, index)

    monkeypatch.setattr(streaming._Item, "__call__", dies_at_20)
    with pytest.raises(StreamError, match="samples 16-24: the conversion wrote .* rerun the same command to resume "
                                          "from sample 16"):
        convert(StreamingTranslationDataModule(**kw), tmp_path / "chunks", num_workers=1, chunk_bytes=20_000,
                block_samples=8)
    assert "train" not in json.loads((tmp_path / "chunks" / META).read_text())["splits"]
    train_dir = tmp_path / "chunks" / "train"
    good = json.loads((train_dir / "index.good.json").read_text())  # samples 0-16, the two whole blocks
    assert sum(chunk["chunk_size"] for chunk in good["chunks"]) == 16
    kept = {c["filename"]: (train_dir / c["filename"]).stat().st_mtime_ns for c in good["chunks"]}
    monkeypatch.setattr(streaming._Item, "__call__", original)
    meta = convert(StreamingTranslationDataModule(**kw), tmp_path / "chunks", num_workers=1, chunk_bytes=20_000,
                   block_samples=8)
    assert meta["splits"] == {"train": 26, "dev": 5, "test": 2}
    dm = _streamed(kw, tmp_path / "chunks")
    _drive(dm, epoch=0)
    names = sorted(n for b in dm.train_dataloader() for n in b["name"])
    assert names == sorted(r["name"] for r in _records_of(StreamingTranslationDataModule(**kw)))  # each once
    assert all((train_dir / name).stat().st_mtime_ns == mtime for name, mtime in kept.items())  # not redone


def _records_of(dm) -> list[dict]:
    dm.setup("fit")
    return dm.datasets["train"].records
