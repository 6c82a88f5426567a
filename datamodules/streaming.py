"""Translation data streamed from litdata chunks: datasets bigger than a node's disk, on many nodes.

Convert once (any translation config; the packed cache is built first and its normalised clips are
what the chunks hold, so nothing is normalised twice; ``lightning_modules/convert_stream.py`` resolves
the config and calls ``convert``)::

    lightning convert_stream --config experiments/csl_news_pretrain.yaml --out /data/csl_news_stream
    aws s3 sync /data/csl_news_stream s3://bucket/csl_news          # optional: an object store

then train with ``--data.init_args.stream_dir /data/csl_news_stream`` (or ``s3://bucket/csl_news``)
and the config's DataModule class from here (``StreamingTranslationDataModule``,
``StreamingCSLNewsDataModule``); without ``stream_dir`` they are their parent classes.

Layout of ``--out``: ``<split>/`` litdata chunks per split (``litdata.optimize``: parallel workers,
a progress bar; called on blocks of ``--block-samples`` samples in append mode, the index saved after
each whole block, so a killed conversion rerun with the same command resumes at the first unfinished
block and a finished split is skipped) and ``signlab_stream.json``: format, the config's identity (dataset and its folders,
tokenizer, ``max_len``, ``max_target_len``, the part nodes and normalisation constants) with its
sha256 fingerprint, and each finished split's sample count. A DataModule refuses chunks whose
fingerprint differs from its own config's, listing the differing keys. Each chunk item is one
sample: its split index, its packed clip (``nodes`` (T, 69, 3) float32 normalised whole,
``extremes`` (T, 5)) and a JSON string (name, text, gloss, target ids, crop box, or the error its
pose file raised at packing, which ``on_bad_sample`` then handles as on the packed path).

Batches: the items go through ``PoseTextDataset`` itself (a packed-cache reader over the streamed
clips), so frame sampling (seeded by ``(seed, epoch, split index)``), reboxing and the collate are
the packed path's: a sample's batch values equal the packed path's to float32 rounding (tested).

Training split: litdata's ``StreamingDataset`` / ``StreamingDataLoader``, shuffled by
``(seed, epoch)`` chunk by chunk and sharded over every rank of every node (litdata reads the
process group). Under DDP it drops the tail that does not fill a batch on every rank (at most
``world × batch_size − 1`` samples an epoch, a different tail each epoch), so all ranks step
together. Resume: the DataModule's ``state_dict`` holds litdata's loader state rebuilt from the
trainer's count of finished batches (not litdata's own count, which runs ahead by Lightning's
prefetch); the loader restores it at the first batch of the resumed epoch, so ``--ckpt_path
last`` continues the same sample order. Dev and test: the chunks read by index through the
``ShardSampler`` of the packed path (rank r takes r::world, nothing dropped).

Bad input, each a clear error naming the place: a ``stream_dir`` without ``signlab_stream.json``
(wrong path, never converted, conversion unfinished), a missing or empty split, chunks of another
config, an object store that does not answer within ``stream_timeout`` seconds (connect and read
timeouts, 3 attempts) instead of a hang. A node that dies: see ``experiments/strategies/multinode.yaml``
(the process group's timeout).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.batches import (SplitDataModule, TranslationCollate, _DeferredIterator, draw_epoch_seed,
                                 without_empty)
from datamodules.csl_news import UNISIGN_DEV_FRACTION, CSLNewsDataModule
from datamodules.keypoints import MIN_VALID_BODY_POINTS, PART_NODES_COCO, SCORE_THRESHOLD
from datamodules.packed import ERROR_TYPES, FORMAT_VERSION, PackedClip, error_reason
from datamodules.translation import PoseTextDataset, SignTranslationDataModule

log = logging.getLogger(__name__)

STREAM_FORMAT = 1
META = "signlab_stream.json"
CHUNK_BYTES = "64MB"
# Samples per litdata.optimize call: a killed conversion redoes at most one block. (litdata's own
# use_checkpoint does not survive a worker killed by a signal: it marks the run done, writes an index
# without the lost chunks and deletes its checkpoints.)
BLOCK_SAMPLES = 20_000  # litdata's suggested size: few objects per node, small enough to prefetch


class StreamError(RuntimeError):
    """Chunks that cannot be used: missing, unreachable, unfinished or from another config."""


# ------------------------------------------------------------------ identity of a config's samples


def stream_identity(dm: SignTranslationDataModule) -> dict[str, Any]:
    """What decides a DataModule's streamed samples and batches, as plain JSON values."""
    hp = dm.hparams
    return {"format": STREAM_FORMAT, "packed_format": FORMAT_VERSION, "dataset": dm.dataset,
            "label_dir": str(dm.label_dir), "pose_dir": str(dm.pose_dir),
            "label_file": str(getattr(dm, "label_file", "")), "dev_fraction": getattr(dm, "dev_fraction", None),
            "synthsign_kwargs": dm.synthsign_kwargs if dm.dataset == "synthsign" or getattr(dm, "synthsign", False) else None,
            "tokenizer": hp["tokenizer"], "max_target_len": dm.max_target_len, "max_len": dm.max_len,
            "parts": PART_NODES_COCO.tolist(), "score_threshold": SCORE_THRESHOLD,
            "min_body_points": MIN_VALID_BODY_POINTS}


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if "://" in root else str(Path(root, *parts))


def read_meta(stream_dir: str, timeout: float = 60) -> dict:
    """``signlab_stream.json`` of a local folder or ``s3://`` prefix; StreamError naming it otherwise."""
    where = _join(stream_dir, META)
    try:
        if stream_dir.startswith("s3://"):
            import boto3  # installed with litdata
            from botocore.config import Config

            bucket, _, key = where[len("s3://"):].partition("/")
            client = boto3.client("s3", config=Config(connect_timeout=timeout, read_timeout=timeout,
                                                      retries={"max_attempts": 3}))
            raw = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        elif "://" in stream_dir:
            raise StreamError(f"stream_dir {stream_dir}: only local folders and s3:// are supported")
        else:
            raw = Path(where).read_bytes()
        meta = json.loads(raw)
    except StreamError:
        raise
    except FileNotFoundError:
        raise StreamError(f"{where} not found: stream_dir {stream_dir} holds no converted chunks (wrong path, or run "
                          "lightning convert_stream --config CONFIG --out DIR first)") from None
    except Exception as err:  # unreachable store, no credentials, timeout, not JSON
        raise StreamError(f"cannot read {where} ({type(err).__name__}: {err})") from err
    if not isinstance(meta, dict) or meta.get("format") != STREAM_FORMAT:
        raise StreamError(f"{where}: not a signlab stream of format {STREAM_FORMAT}")
    return meta


def check_meta(meta: dict, dm: SignTranslationDataModule, stream_dir: str, split: str) -> int:
    """The split's sample count, after checking the chunks were made from this config."""
    identity = stream_identity(dm)
    if meta.get("fingerprint") != fingerprint(identity):
        stored = meta.get("identity", {})
        diff = {k: (stored.get(k), identity[k]) for k in sorted(identity.keys() | stored.keys())
                if stored.get(k) != identity.get(k) and k != "parts"}
        if stored.get("parts") != identity["parts"]:
            diff["parts"] = ("other part nodes", "this config's part nodes")
        raise StreamError(f"{_join(stream_dir, META)}: the chunks were built from another config "
                          f"(chunks vs this config: {diff}); convert this config into another folder")
    count = meta.get("splits", {}).get(split)
    if not count:
        raise StreamError(f"stream_dir {stream_dir}: split {split!r} is "
                          f"{'empty' if count == 0 else 'missing or its conversion unfinished'} "
                          f"(finished splits: {meta.get('splits', {})})")
    return count


# ------------------------------------------------------------------ chunk items <-> packed clips


class _Item:
    """``litdata.optimize``'s function: split index -> chunk item (runs in its worker processes;
    ``PackedPoses`` maps its arrays again after pickling)."""

    def __init__(self, data: PoseTextDataset):
        self.records, self.poses = data.records, data.poses

    def __call__(self, index: int) -> dict:
        record = self.records[index]
        meta = {"name": record["name"], "text": record["text"], "gloss": record["gloss"],
                "target_ids": record["target_ids"], "error": None}
        try:
            clip = self.poses.read(record["name"])
        except (OSError, ValueError) as err:  # stored at packing: replayed when the sample is loaded
            meta["error"] = [error_reason(err), str(err)]
            nodes, extremes = np.zeros((1, 69, 3), np.float32), np.zeros((1, 5), np.float32)
        else:
            meta["box"] = [*clip.corner, clip.scale]
            nodes, extremes = np.ascontiguousarray(clip.nodes), np.ascontiguousarray(clip.extremes)
        return {"index": index, "meta": json.dumps(meta, ensure_ascii=False), "nodes": nodes, "extremes": extremes}


class _StreamedPoses:
    """``PackedPoses.read`` over one batch's chunk items, so ``PoseTextDataset`` reads them unchanged."""

    def __init__(self, items: dict[str, tuple[dict, dict]]):
        self.items = items

    def read(self, name: str) -> PackedClip:
        item, meta = self.items[name]
        if meta["error"] is not None:
            reason, message = meta["error"]
            raise ERROR_TYPES[reason](message)
        nodes = item["nodes"] if item["nodes"].flags.writeable else item["nodes"].copy()  # torch.from_numpy
        corner_x, corner_y, scale = meta["box"]
        return PackedClip(nodes, item["extremes"], (corner_x, corner_y), scale)


def normalised_items(items: list[dict], where: str, max_len: int, train: bool, seed: int,
                     on_bad_sample: str) -> list[dict]:
    """Chunk items (each with its ``epoch``) -> the translation dataset's items (or skip markers)."""
    metas = [json.loads(item["meta"]) for item in items]
    records = {item["index"]: {**{k: meta[k] for k in ("name", "text", "gloss", "target_ids")},
                               "pose_path": f"{where}[{meta['name']}]"} for item, meta in zip(items, metas)}
    poses = _StreamedPoses({meta["name"]: (item, meta) for item, meta in zip(items, metas)})
    data = PoseTextDataset(records, max_len, train, seed, on_bad_sample, poses)
    return data.__getitems__([(item["index"], item["epoch"]) for item in items])


class StreamCollate:
    """Training batches from chunk items: ``normalised_items`` then the packed path's collate."""

    def __init__(self, where: str, max_len: int, seed: int, on_bad_sample: str, pad_id: int):
        self.where, self.max_len, self.seed, self.on_bad_sample = where, max_len, seed, on_bad_sample
        self.collate = TranslationCollate(pad_id)

    def __call__(self, items: list[dict]) -> dict:
        return self.collate(normalised_items(items, self.where, self.max_len, True, self.seed, self.on_bad_sample))


class IndexedStream(Dataset):
    """Dev/test: a split's chunks by index, for the ``ShardSampler`` loaders of the packed path."""

    def __init__(self, stream, count: int, where: str, max_len: int, seed: int, on_bad_sample: str):
        self.stream, self.count, self.where = stream, count, where
        self.max_len, self.seed, self.on_bad_sample = max_len, seed, on_bad_sample

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list[dict]:
        items = [{**self.stream[index], "epoch": 0} for index in keys]
        return normalised_items(items, self.where, self.max_len, False, self.seed, self.on_bad_sample)


def _streaming_dataset(input_dir: str, shuffle: bool, seed: int, cache_dir: str | None):
    from litdata import StreamingDataset

    class TrainStream(StreamingDataset):
        """Items carry the trainer's epoch (litdata counts epochs from 1) for the frame sampling seed."""

        def __getitem__(self, index):
            item = super().__getitem__(index)
            return {**item, "epoch": self.current_epoch - 1}

    return TrainStream(input_dir, shuffle=shuffle, seed=seed, cache_dir=cache_dir)


def _streaming_loader_class():
    from litdata import StreamingDataLoader

    class ResumableStreamingLoader(StreamingDataLoader):
        """litdata's loader, positioned by the trainer (as ``ResumableLoader``): at the first batch of
        an epoch it takes the epoch from the trainer and, after a mid-epoch resume, the position from
        ``position_fn`` (litdata's state for the trainer's finished batches); deferred to the first
        ``next()`` because Lightning may build the iterator before it restores the checkpoint."""

        def __init__(self, *args, epoch_fn: Callable[[], int], position_fn: Callable[[], dict | None],
                     on_empty: Callable[[list], None], **kwargs):
            super().__init__(*args, **kwargs)
            self.epoch_fn, self.position_fn, self.on_empty = epoch_fn, position_fn, on_empty

        def __iter__(self):
            def start():
                position = self.position_fn()
                if position is not None:
                    StreamingDataLoader.load_state_dict(self, position)
                else:  # a fresh epoch: litdata adds 1 when iteration starts
                    self.restore = False
                    self.current_epoch = self.epoch_fn()
                    self.dataset._state_dict = None
                # the packed path's one global RNG draw per epoch, at the same place (workers' base seed)
                self.generator = torch.Generator().manual_seed(draw_epoch_seed())
                return without_empty(StreamingDataLoader.__iter__(self), self.on_empty)

            return _DeferredIterator(start)

        def state_dict(self) -> dict:  # what Lightning stores for the loader: the DataModule holds the rest
            return {"epoch": self.epoch_fn()}

        def load_state_dict(self, state: dict) -> None:
            if state.keys() != {"epoch"}:
                raise ValueError(f"ResumableStreamingLoader: unexpected loader state {state!r} in the checkpoint")

    return ResumableStreamingLoader


# ------------------------------------------------------------------ the DataModules


class _Streaming:
    """What ``stream_dir`` changes in a translation DataModule (a mixin before it in the MRO)."""

    stream_dir: str | None
    stream_timeout: float
    stream_cache_dir: str | None

    def _init_stream(self, stream_dir: str | None, stream_timeout: float, stream_cache_dir: str | None) -> None:
        self.stream_dir = str(stream_dir).rstrip("/") if stream_dir else None
        self.stream_timeout, self.stream_cache_dir = stream_timeout, stream_cache_dir
        self._meta: dict | None = None
        self._restored_position: dict | None = None

    def prepare_data(self) -> None:
        if self.stream_dir is None:
            super().prepare_data()  # the dataset's files are not needed when streaming

    def setup(self, stage: str | None = None) -> None:
        if self.stream_dir is None:
            return super().setup(stage)
        SplitDataModule.setup(self, stage)  # -> _build per split, without the parent's file checks

    def _build(self, split: str):
        if self.stream_dir is None:
            return super()._build(split)
        if self._meta is None:
            self._meta = read_meta(self.stream_dir, self.stream_timeout)
        count = check_meta(self._meta, self, self.stream_dir, split)
        where = _join(self.stream_dir, split)
        if not self.stream_dir.startswith("s3://") and not Path(where, "index.json").is_file():
            raise StreamError(f"{where}: no index.json (chunks deleted or not copied with {META})")
        stream = _streaming_dataset(where, shuffle=split == "train", seed=self.seed, cache_dir=self.stream_cache_dir)
        if split == "train":
            return stream
        # len(stream) is this rank's share under DDP; indexing is global
        return IndexedStream(stream, count, where, self.max_len, self.seed, self.on_bad_sample)

    def _loader(self, split: str):
        if self.stream_dir is None or split != "train":
            return super()._loader(split)
        if split not in self.datasets:
            raise RuntimeError("call setup() before asking for the train dataloader")
        collate = StreamCollate(_join(self.stream_dir, split), self.max_len, self.seed, self.on_bad_sample,
                                self.tokenizer.pad_token_id)
        loader = _streaming_loader_class()(self.datasets["train"], batch_size=self.batch_size,
                                           num_workers=self.num_workers, collate_fn=collate,
                                           epoch_fn=self._current_epoch, position_fn=self._position,
                                           on_empty=self._empty_train_batch)
        self._train_loader = loader
        return loader

    def _litdata_state(self, batches: int, epoch: int) -> dict:
        """litdata's loader state after ``batches`` batches of ``epoch`` on this rank."""
        loader, dataset = self._train_loader, self.datasets["train"]
        samples = batches * self.batch_size
        saved_epoch, dataset.current_epoch = dataset.current_epoch, epoch + 1  # litdata counts from 1
        try:
            state = dataset.state_dict(samples, loader.num_workers, self.batch_size)
        finally:
            dataset.current_epoch = saved_epoch
        return {"dataset": state, "current_epoch": epoch + 1, "num_samples_yielded": samples,
                "latest_worker_idx": (batches - 1) % max(loader.num_workers, 1)}

    def _position(self) -> dict | None:
        """At an epoch's first batch: litdata's state to resume from (checkpoint), or None."""
        consumed = self._consumed_batches()
        batches = consumed + self._dropped_before(consumed)
        restored, self._restored_position = self._restored_position, None
        if not batches:
            return None
        if restored is None or restored["batches"] != batches or restored["epoch"] != self._current_epoch():
            raise StreamError(f"resuming mid-epoch at batch {batches} of epoch {self._current_epoch()}, but the "
                              f"checkpoint's stream position is {restored and {k: restored[k] for k in ('epoch', 'batches')}}")
        return restored["litdata"]

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.stream_dir is not None and getattr(self, "_train_loader", None) is not None and self.trainer is not None:
            batches = self._consumed_batches() + self._epoch_dropped
            epoch = self._current_epoch()
            state["stream"] = {"epoch": epoch, "batches": batches,
                               "litdata": self._litdata_state(batches, epoch) if batches else None}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._restored_position = state.get("stream")


class StreamingTranslationDataModule(_Streaming, SignTranslationDataModule):
    """``SignTranslationDataModule`` that streams from litdata chunks when ``stream_dir`` is set
    (a local folder or ``s3://bucket/prefix`` written by ``lightning convert_stream``);
    ``stream_timeout``: seconds before an unreachable store is an error; ``stream_cache_dir``:
    litdata's local chunk cache for remote chunks. The other arguments are the parent's and must
    be those the chunks were converted with (checked)."""

    def __init__(self, dataset: str = "synthsign", data_dir: str = "data/synthsign",
                 label_dir: str | None = None, pose_dir: str | None = None,
                 tokenizer: str = "synthsign-zh", language: str | None = None,
                 max_len: int = 256, max_target_len: int = 64,
                 batch_size: int = 8, num_workers: int = 0, on_bad_sample: str = "raise",
                 seed: int = 0, synthsign_kwargs: dict | None = None, packed: bool = True,
                 cache_dir: str | None = None, stream_dir: str | None = None, stream_timeout: float = 60,
                 stream_cache_dir: str | None = None):
        super().__init__(dataset=dataset, data_dir=data_dir, label_dir=label_dir, pose_dir=pose_dir,
                         tokenizer=tokenizer, language=language, max_len=max_len, max_target_len=max_target_len,
                         batch_size=batch_size, num_workers=num_workers, on_bad_sample=on_bad_sample, seed=seed,
                         synthsign_kwargs=synthsign_kwargs, packed=packed, cache_dir=cache_dir)
        self._init_stream(stream_dir, stream_timeout, stream_cache_dir)


class StreamingCSLNewsDataModule(_Streaming, CSLNewsDataModule):
    """``CSLNewsDataModule`` that streams from litdata chunks when ``stream_dir`` is set (as
    ``StreamingTranslationDataModule``)."""

    def __init__(self, label_file: str = "data/CSL_News/CSL_News_Labels.json",
                 pose_dir: str = "data/CSL_News/pose_format", split_dir: str | None = None,
                 dev_fraction: float = UNISIGN_DEV_FRACTION, synthsign: bool = False,
                 data_dir: str = "data/synthsign", tokenizer: str = "google/mt5-base", language: str = "zh",
                 max_len: int = 256, max_target_len: int = 64, batch_size: int = 8, num_workers: int = 0,
                 on_bad_sample: str = "raise", seed: int = 0, synthsign_kwargs: dict | None = None,
                 packed: bool = True, stream_dir: str | None = None, stream_timeout: float = 60,
                 stream_cache_dir: str | None = None):
        super().__init__(label_file=label_file, pose_dir=pose_dir, split_dir=split_dir, dev_fraction=dev_fraction,
                         synthsign=synthsign, data_dir=data_dir, tokenizer=tokenizer, language=language,
                         max_len=max_len, max_target_len=max_target_len, batch_size=batch_size,
                         num_workers=num_workers, on_bad_sample=on_bad_sample, seed=seed,
                         synthsign_kwargs=synthsign_kwargs, packed=packed)
        self._init_stream(stream_dir, stream_timeout, stream_cache_dir)


# ------------------------------------------------------------------ conversion


def convert(dm: SignTranslationDataModule, out: str | Path, num_workers: int = 2,
            chunk_bytes: str | int = CHUNK_BYTES, splits: tuple[str, ...] = ("train", "dev", "test"),
            block_samples: int = BLOCK_SAMPLES) -> dict:
    """Write the DataModule's splits as litdata chunks under ``out`` (see the module docstring);
    returns the metadata. Resumes a killed conversion; refuses a folder of another config's chunks."""
    out = Path(out)
    identity = stream_identity(dm)
    meta_path = out / META
    meta = {"format": STREAM_FORMAT, "identity": identity, "fingerprint": fingerprint(identity), "splits": {}}
    if meta_path.is_file():
        existing = json.loads(meta_path.read_text())
        if existing.get("fingerprint") != meta["fingerprint"]:
            raise StreamError(f"{meta_path}: {out} holds chunks of another config; choose another folder")
        meta["splits"] = existing.get("splits", {})
    out.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=1))
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    for split in splits:
        if split in meta["splits"] or split not in dm.datasets:
            continue
        data = dm.datasets[split]
        if data.poses is None:
            raise StreamError(f"{dm.cache_dir}: no packed cache for {split} (the chunks hold its normalised "
                              "clips): set packed: true, and cache_dir to a writable folder if the labels' is not")
        _optimize_in_blocks(_Item(data), len(data), out / split, num_workers, chunk_bytes, block_samples)
        meta["splits"][split] = len(data)
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, meta_path)  # a split counts as done only once all its chunks are written
    return meta


def _optimize_in_blocks(fn: _Item, count: int, split_dir: Path, num_workers: int, chunk_bytes: str | int,
                        block_samples: int) -> None:
    """``litdata.optimize`` of samples ``[0, count)`` into ``split_dir``, ``block_samples`` at a time
    (``mode="append"``). After each block that wrote all its samples, ``index.json`` is copied to
    ``index.good.json``; a rerun first rolls back to that copy, deletes chunks it does not list
    (those of a block that was killed) and continues with the next block."""
    from litdata import optimize

    index, good = split_dir / "index.json", split_dir / "index.good.json"
    while True:
        if good.is_file():
            os.replace(good, index)
            shutil.copyfile(index, good)
        else:
            index.unlink(missing_ok=True)
        kept = {chunk["filename"] for chunk in json.loads(index.read_text())["chunks"]} if index.is_file() else set()
        for path in split_dir.glob("chunk-*"):
            if path.name not in kept:
                path.unlink()
        done = _written_samples(split_dir)
        if done >= count:
            good.unlink(missing_ok=True)
            return
        stop = min(done + block_samples, count)
        print(f"{split_dir}: samples {done}-{stop} of {count}", file=sys.stderr)
        optimize(fn=fn, inputs=list(range(done, stop)), output_dir=str(split_dir), chunk_bytes=chunk_bytes,
                 num_workers=num_workers, mode="append" if done else None,
                 start_method="fork" if os.name == "posix" else None)
        written = _written_samples(split_dir)
        if written != stop:  # litdata counts a worker that died (killed, out of memory) as finished
            raise StreamError(f"{split_dir}: samples {done}-{stop}: the conversion wrote {written - done} of "
                              f"{stop - done} (a worker died?); rerun the same command to resume from sample {done}")
        shutil.copyfile(index, split_dir / "index.good.tmp")
        os.replace(split_dir / "index.good.tmp", good)


def _written_samples(split_dir: Path) -> int:
    """Samples listed in a split's litdata ``index.json`` (0 when there is none)."""
    try:
        index = json.loads((split_dir / "index.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(chunk["chunk_size"] for chunk in index.get("chunks", []))
