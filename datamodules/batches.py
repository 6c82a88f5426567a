"""Batch layouts, collate functions, samplers and bad-sample bookkeeping for both DataModules.

Batch keys (the contract models code against):

Translation (``SignTranslationDataModule``; B samples, T frames, L target tokens)
    body        (B, T, 9, 3)  float32  x, y, score per node; Uni-Sign normalisation
    left        (B, T, 21, 3) float32  signer's left hand, relative to its wrist root
    right       (B, T, 21, 3) float32  signer's right hand
    face        (B, T, 18, 3) float32  relative to the nose tip
    frame_mask  (B, T)  bool   True on real frames; padding repeats the last real frame
    target_ids  (B, L)  long   tokenised text ending with eos, padded with the tokenizer's pad id
    target_mask (B, L)  bool   True on real tokens (eos included)
    text        list[str];  gloss list[list[str]];  name list[str]

Production (``GlossToPoseDataModule``; T frames, G glosses)
    poses       (B, T, 50, 3) float32  PT joints (xyz), zeros at padding
    pose_mask   (B, T)  bool
    gloss_ids   (B, G)  long   ``GlossVocab`` ids, padded with 0 (``<pad>``)
    gloss_mask  (B, G)  bool
    gloss       list[list[str]];  text list[str];  name list[str]

With ``on_bad_sample="skip"`` a dataset returns a marker for an unreadable sample; the collate
drops it and lists it under ``skipped`` (``[(name, reason, message)]``), which the DataModule
pops in ``on_before_batch_transfer`` (main process, so counts survive worker processes).

``SplitDataModule`` holds what both DataModules share: SynthSign preparation, per-stage setup,
sharded loaders and the skip count.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)

ON_BAD_SAMPLE = ("raise", "skip")


class BadSampleError(ValueError):
    """A sample that cannot be used; the message names the sample and its file."""


def check_on_bad_sample(value: str) -> str:
    if value not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {value!r}")
    return value


def skip_marker(name: str, reason: str, message: str) -> dict:
    """What a dataset returns instead of a sample when skipping it."""
    return {"name": name, "skipped": (name, reason, message)}


def record_skips(skipped: dict[str, list[str]], entries: Sequence[tuple[str, str, str]]) -> None:
    """Add ``(name, reason, message)`` entries to ``skipped`` (reason -> names), warning once
    per new sample (a bad file is dropped again every epoch)."""
    for name, reason, message in entries:
        names = skipped.setdefault(reason, [])
        if name not in names:
            names.append(name)
            log.warning("skipping sample %r (%s): %s", name, reason, message)


def _split_skipped(items: list[dict]) -> tuple[list[dict], list[tuple[str, str, str]]]:
    good = [it for it in items if "skipped" not in it]
    skipped = [it["skipped"] for it in items if "skipped" in it]
    if not good:
        detail = "; ".join(msg for _, _, msg in skipped)
        raise BadSampleError(f"every sample in this batch is unreadable: {detail}")
    return good, skipped


def pad_time(seqs: Sequence[torch.Tensor], repeat_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (T_i, ...) tensors to (B, T_max, ...) plus a (B, T_max) bool mask of real steps.

    Padding repeats each sequence's last step (Uni-Sign's collate) or is zero.
    """
    lengths = torch.tensor([len(s) for s in seqs])
    out = seqs[0].new_zeros((len(seqs), int(lengths.max()), *seqs[0].shape[1:]))
    for b, s in enumerate(seqs):
        out[b, :len(s)] = s
        if repeat_last:
            out[b, len(s):] = s[-1]
    mask = torch.arange(out.shape[1])[None] < lengths[:, None]  # (B, T_max)
    return out, mask


class TranslationCollate:
    """Items -> translation batch (see module docstring). Tokenises the texts here."""

    def __init__(self, tokenizer, max_target_len: int):
        self.tokenizer = tokenizer
        self.max_target_len = max_target_len

    def __call__(self, items: list[dict]) -> dict:
        items, skipped = _split_skipped(items)
        batch = {}
        for part in ("body", "left", "right", "face"):
            batch[part], batch["frame_mask"] = pad_time([it[part] for it in items], repeat_last=True)
        texts = [it["text"] for it in items]
        # truncation keeps room for eos, so every row still ends with it
        enc = self.tokenizer(texts, padding="longest", truncation=True,
                             max_length=self.max_target_len, return_tensors="pt")
        batch["target_ids"] = enc["input_ids"].long()
        batch["target_mask"] = enc["attention_mask"].bool()
        batch["text"] = texts
        batch["gloss"] = [it["gloss"] for it in items]
        batch["name"] = [it["name"] for it in items]
        if skipped:
            batch["skipped"] = skipped
        return batch


def collate_production(items: list[dict]) -> dict:
    """Items -> production batch (see module docstring)."""
    items, skipped = _split_skipped(items)
    poses, pose_mask = pad_time([it["poses"] for it in items], repeat_last=False)
    gloss_ids, gloss_mask = pad_time([it["gloss_ids"] for it in items], repeat_last=False)
    batch = {"poses": poses, "pose_mask": pose_mask, "gloss_ids": gloss_ids, "gloss_mask": gloss_mask,
             "gloss": [it["gloss"] for it in items], "text": [it["text"] for it in items],
             "name": [it["name"] for it in items]}
    if skipped:
        batch["skipped"] = skipped
    return batch


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardSampler(Sampler):
    """Our own sampler, so DDP never pads or duplicates evaluation samples.

    - ``shuffle=False`` (dev/test): rank r gets indices ``r::world`` in order, no padding, so
      every sample is evaluated exactly once; the model gathers results across ranks.
    - ``shuffle=True`` (train): a permutation seeded by ``(seed, epoch)``, truncated to a
      multiple of the world size (at most world-1 samples wait for the next epoch's
      permutation), then ``r::world``; every rank gets the same number of batches. It yields
      ``(index, epoch)`` so the dataset can seed its per-sample randomness (frame subsets)
      from ``(seed, epoch, index)`` alone, whatever the number of workers.

    The epoch is read from ``epoch_fn`` (the DataModule passes the trainer's current epoch)
    when iteration starts, else from ``set_epoch``.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0,
                 epoch_fn: Callable[[], int] | None = None):
        self.size, self.shuffle, self.seed, self.epoch_fn = size, shuffle, seed, epoch_fn
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        rank, world = rank_and_world()
        return self.size // world if self.shuffle else len(range(rank, self.size, world))

    def __iter__(self):
        rank, world = rank_and_world()
        if not self.shuffle:
            yield from range(rank, self.size, world)
            return
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        order = order[:self.size // world * world]
        for index in order[rank::world].tolist():
            yield index, epoch


STAGE_SPLITS = {"fit": ("train", "dev"), "validate": ("dev",), "test": ("test",), "predict": ("test",)}
SPLITS = ("train", "dev", "test")


class SplitDataModule(L.LightningDataModule):
    """Shared DataModule plumbing; subclasses set ``dataset``, ``data_dir``, ``synthsign_kwargs``,
    ``batch_size``, ``num_workers``, ``seed``, ``collate_fn`` and implement ``_build(split)``.

    Loaders use ``ShardSampler`` (so set ``use_distributed_sampler: false`` in the trainer):
    dev/test shard ``r::world`` without padding, so the model must gather its predictions;
    training shards a seeded per-epoch permutation into equal parts.
    """

    def __init__(self):
        super().__init__()
        self.skipped: dict[str, list[str]] = {}
        self.datasets: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        if self.dataset == "synthsign":
            from datamodules.synthetic import ensure_synthsign

            ensure_synthsign(self.data_dir, **self.synthsign_kwargs)

    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS.get(stage, SPLITS):
            if split not in self.datasets:
                self.datasets[split] = self._build(split)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"call setup() before asking for the {split} dataloader")
        data = self.datasets[split]
        train = split == "train"
        sampler = ShardSampler(len(data), shuffle=train, seed=self.seed,
                               epoch_fn=self._current_epoch if train else None)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=self.collate_fn, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        record_skips(self.skipped, batch.pop("skipped", ()))
        return batch

    @property
    def num_skipped(self) -> int:
        return sum(len(names) for names in self.skipped.values())
