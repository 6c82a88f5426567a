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
pops in ``on_before_batch_transfer`` (main process, so counts survive worker processes). A batch
whose every sample was skipped becomes a marker batch (``ALL_SKIPPED``) that the DataModule's
loaders leave out, counting it (``skipped_batches``); under DDP, where every rank must see the
same number of batches, it raises instead.

Skipped samples are reported in summaries, never one log line per file (a partial CSL-Daily
would otherwise log some 19,000): one line per split at ``setup`` and one per batch that skips new
samples (the first ``SKIP_LOG_LINES`` of those), each with the count by reason and the first few
names; every skipped sample, with its message, goes to ``<run>/skipped_samples.tsv`` (the trainer's
``default_root_dir``; ``skipped_samples.rank<r>.tsv`` per rank under DDP), or, with no trainer
attached, to a file in the temporary folder that the line names.

``SplitDataModule`` holds what both DataModules share: SynthSign preparation, per-stage setup,
sharded loaders and the skip count.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.keypoints import PART_SLICES

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


SKIP_FILE = "skipped_samples.tsv"
SKIP_EXAMPLES = 5  # names shown in a summary line
SKIP_LOG_LINES = 10  # batch-time summary lines; later skips are only written to the file


class SkippedSamples(dict):
    """``reason -> names`` of the samples skipped so far (what readers of ``datamodule.skipped``
    see: a plain dict), each sample once however often it is dropped (a bad file is dropped again
    every epoch), plus the entries added since the last ``take_new`` with their messages."""

    def __init__(self):
        super().__init__()
        self._seen: set[tuple[str, str]] = set()
        self._new: list[tuple[str, str, str]] = []

    def add(self, name: str, reason: str, message: str) -> None:
        if (reason, name) not in self._seen:
            self._seen.add((reason, name))
            self.setdefault(reason, []).append(name)
            self._new.append((name, reason, message))

    def take_new(self) -> list[tuple[str, str, str]]:
        new, self._new = self._new, []
        return new


def record_skips(skipped: SkippedSamples, entries: Sequence[tuple[str, str, str]]) -> None:
    """Add ``(name, reason, message)`` entries to ``skipped``; the DataModule reports them in summaries."""
    for name, reason, message in entries:
        skipped.add(name, reason, message)


def skip_summary(entries: Sequence[tuple[str, str, str]]) -> str:
    """``3 (missing 2, invalid 1): a, b, c`` for skip entries: the count by reason and the first names."""
    counts = Counter(reason for _, reason, _ in entries)
    names = [name for name, _, _ in entries[:SKIP_EXAMPLES]]
    more = ", ..." if len(entries) > SKIP_EXAMPLES else ""
    by_reason = ", ".join(f"{reason} {count}" for reason, count in counts.most_common())
    return f"{len(entries)} ({by_reason}): {', '.join(names)}{more}"


ALL_SKIPPED = "all_skipped"  # the key of the marker batch a collate returns when every sample was skipped


def _split_skipped(items: list[dict]) -> tuple[list[dict], list[tuple[str, str, str]]]:
    good = [it for it in items if "skipped" not in it]
    skipped = [it["skipped"] for it in items if "skipped" in it]
    return good, skipped


def all_skipped_batch(skipped: list[tuple[str, str, str]]) -> dict:
    """What a collate returns for a batch of skip markers only; ``SkippingLoader`` leaves it out."""
    return {ALL_SKIPPED: True, "skipped": skipped}


def length_mask(lengths: torch.Tensor) -> torch.Tensor:
    """Lengths (B,) -> (B, max length) bool, True on each sequence's real steps."""
    return torch.arange(int(lengths.max()))[None] < lengths[:, None]


def padding_rows(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence lengths (B,) -> rows (B * T_max,) into their concatenation that pad each one by
    repeating its last step (Uni-Sign's collate), and the (B, T_max) bool mask of real steps.
    ``index_select`` with these rows copies whole rows; advanced indexing would gather them float by
    float (~4x slower)."""
    mask = length_mask(lengths)  # (B, T_max)
    starts = lengths.cumsum(0) - lengths
    steps = torch.minimum(torch.arange(mask.shape[1])[None], lengths[:, None] - 1)  # (B, T_max), last step repeated
    return (starts[:, None] + steps).view(-1), mask


def pad_zeros(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (T_i, ...) tensors to (B, T_max, ...), zero-padded, plus a (B, T_max) bool mask of real steps."""
    mask = length_mask(torch.tensor([len(s) for s in seqs]))
    return torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True), mask


class TranslationCollate:
    """Items -> translation batch (see module docstring). Items carry their normalised part nodes
    (``nodes``, (T, 69, 3) in ``PART_SLICES`` order) and their tokenised text
    (``target_ids``, a list ending with eos: the DataModule tokenises each split once), padded
    here with ``pad_id``."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        items, skipped = _split_skipped(items)
        if not items:
            return all_skipped_batch(skipped)
        batch = {}
        # one concatenation of all 69 nodes, then each part gathered from it straight into its
        # padded batch tensor: no padded 69-node copy to cut up again
        rows, batch["frame_mask"] = padding_rows(torch.tensor([len(it["nodes"]) for it in items]))
        nodes = torch.cat([it["nodes"] for it in items])  # (N, 69, 3)
        for part, node_slice in PART_SLICES.items():
            part_nodes = nodes[:, node_slice].index_select(0, rows)  # (B * T, V_part, 3)
            batch[part] = part_nodes.view(*batch["frame_mask"].shape, *part_nodes.shape[1:])
        ids = [it["target_ids"] for it in items]
        batch["target_mask"] = length_mask(torch.tensor([len(i) for i in ids]))  # (B, L)
        batch["target_ids"] = torch.full(batch["target_mask"].shape, self.pad_id, dtype=torch.long)
        batch["target_ids"][batch["target_mask"]] = torch.tensor([t for i in ids for t in i])  # row-major fill
        batch["text"] = [it["text"] for it in items]
        batch["gloss"] = [it["gloss"] for it in items]
        batch["name"] = [it["name"] for it in items]
        if skipped:
            batch["skipped"] = skipped
        return batch


def collate_production(items: list[dict]) -> dict:
    """Items -> production batch (see module docstring)."""
    items, skipped = _split_skipped(items)
    if not items:
        return all_skipped_batch(skipped)
    poses, pose_mask = pad_zeros([it["poses"] for it in items])
    gloss_ids, gloss_mask = pad_zeros([it["gloss_ids"] for it in items])
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
    when iteration starts, else from ``set_epoch``. Resuming mid-epoch: ``skip(n)`` drops the
    first ``n`` indices of this rank's shard from the next iteration only; since the order is
    a function of ``(seed, epoch)``, the rest of the epoch is exactly what an uninterrupted
    run would have seen.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0,
                 epoch_fn: Callable[[], int] | None = None):
        self.size, self.shuffle, self.seed, self.epoch_fn = size, shuffle, seed, epoch_fn
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def current_epoch(self) -> int:
        return self.epoch_fn() if self.epoch_fn is not None else self.epoch

    def skip(self, n: int) -> None:
        """Start the next iteration ``n`` indices into this rank's shard (resume)."""
        if n < 0:
            raise ValueError(f"ShardSampler.skip: n must be >= 0, got {n}")
        self._skip = n

    def __len__(self) -> int:
        rank, world = rank_and_world()
        return self.size // world if self.shuffle else len(range(rank, self.size, world))

    def __iter__(self):
        rank, world = rank_and_world()
        skip, self._skip = self._skip, 0  # a resume offset applies to one iteration only
        if not self.shuffle:
            yield from range(rank, self.size, world)[skip:]
            return
        epoch = self.current_epoch()
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        order = order[:self.size // world * world]
        for index in order[rank::world][skip:].tolist():
            yield index, epoch


def draw_epoch_seed() -> int:
    """The one draw from the global torch RNG that every training epoch makes, at its first batch:
    the same draw DataLoader makes for its workers' base seed, so random streams are those of a
    plain DataLoader. ``ResumeState`` replays it after resuming from an epoch's end."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class _DeferredIterator:
    """Builds the DataLoader's iterator at the first ``next()``, not at ``iter()``."""

    def __init__(self, make: Callable[[], object]):
        self._make, self._iterator = make, None

    def __iter__(self):
        return self

    def __next__(self):
        if self._iterator is None:
            self._iterator = self._make()
        return next(self._iterator)


def without_empty(batches, on_empty: Callable[[list], None]):
    """The batches, less the marker batches of samples that were all skipped, whose skip entries go
    to ``on_empty``."""
    for batch in batches:
        if isinstance(batch, dict) and batch.get(ALL_SKIPPED):
            on_empty(batch["skipped"])
            continue
        yield batch


class SkippingLoader(DataLoader):
    """A DataLoader that leaves out the marker batches of samples that were all skipped, handing
    their skip entries to ``on_empty`` (which records and counts them, or raises)."""

    def __init__(self, *args, on_empty: Callable[[list], None], **kwargs):
        super().__init__(*args, **kwargs)
        self.on_empty = on_empty

    def __iter__(self):
        return without_empty(DataLoader.__iter__(self), self.on_empty)


class ResumableLoader(SkippingLoader):
    """A training DataLoader that resumes at the first batch the trainer did not finish.

    Its position inside the epoch is the trainer's own count of finished batches
    (``consumed_fn``), read when an epoch's first batch is requested: 0 for a fresh epoch, the
    restored count after a mid-epoch resume. Reading it there, rather than trusting Lightning to
    call ``load_state_dict`` before iterating, matters: a model that asks for
    ``trainer.estimated_stepping_batches`` in ``configure_optimizers`` makes Lightning build
    the training iterator *before* the checkpoint is restored, and it never calls the loader's
    ``load_state_dict`` afterwards. So the iterator is deferred to the first ``next()`` (with
    workers, building it already draws sampler indices), and the workers' base seed is drawn
    from the global RNG at the same point of every epoch, resumed or not (``draw_epoch_seed``).

    Batches left out because every sample was skipped are not in the trainer's count:
    ``dropped_fn(consumed)`` says how many of them came before its position (restored with the
    checkpoint after a mid-epoch resume), and the sampler skips those too.

    ``state_dict`` records the position in the checkpoint (and marks the loader resumable for
    Lightning); ``load_state_dict`` only checks it against the trainer's restored count.
    """

    def __init__(self, *args, consumed_fn: Callable[[], int], dropped_fn: Callable[[int], int] = lambda consumed: 0,
                 on_empty: Callable[[list], None] = lambda skipped: None, **kwargs):
        super().__init__(*args, on_empty=on_empty, **kwargs)
        if not isinstance(self.sampler, ShardSampler):
            raise TypeError(f"ResumableLoader needs a ShardSampler, got {type(self.sampler).__name__}")
        self.consumed_fn, self.dropped_fn = consumed_fn, dropped_fn

    def __iter__(self):
        def start():
            consumed = self.consumed_fn()
            self.sampler.skip((consumed + self.dropped_fn(consumed)) * self.batch_size)
            self.generator = torch.Generator().manual_seed(draw_epoch_seed())  # DataLoader draws from it
            return SkippingLoader.__iter__(self)

        return _DeferredIterator(start)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.current_epoch(), "batches": int(self.consumed_fn())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.keys() != {"epoch", "batches"}:
            raise ValueError(f"ResumableLoader: unexpected loader state {state!r} in the checkpoint")


STAGE_SPLITS = {"fit": ("train", "dev"), "validate": ("dev",), "test": ("test",), "predict": ("test",)}
SPLITS = ("train", "dev", "test")


class SplitDataModule(L.LightningDataModule):
    """Shared DataModule plumbing; subclasses set ``dataset``, ``data_dir``, ``synthsign_kwargs``,
    ``batch_size``, ``num_workers``, ``seed``, ``collate_fn`` and implement ``_build(split)``.

    Loaders use ``ShardSampler`` (so set ``use_distributed_sampler: false`` in the trainer):
    dev/test shard ``r::world`` without padding, so the model must gather its predictions;
    training shards a seeded per-epoch permutation into equal parts, through a
    ``ResumableLoader`` so a mid-epoch checkpoint resumes at the next unseen batch.
    """

    test_splits: tuple[str, ...] = ("test",)  # what `lightning test` evaluates, in order

    def __init__(self):
        super().__init__()
        self.skipped = SkippedSamples()
        self.skip_file: Path | None = None  # where every skipped sample is listed, once there is one
        self._skip_lines = 0  # batch-time summary lines logged
        self.datasets: dict[str, Dataset] = {}
        self.skipped_batches = 0  # batches left out because every sample in them was skipped
        self._epoch_dropped = 0  # ... of them in the current training epoch (saved with checkpoints)
        self._restored_dropped = 0

    def prepare_data(self) -> None:
        if self.dataset == "synthsign":
            from datamodules.synthetic import ensure_synthsign

            ensure_synthsign(self.data_dir, **self.synthsign_kwargs)

    @classmethod
    def stage_splits(cls, stage: str | None) -> tuple[str, ...]:
        """The splits ``setup(stage)`` builds."""
        return cls.test_splits if stage == "test" else STAGE_SPLITS.get(stage, SPLITS)

    def setup(self, stage: str | None = None) -> None:
        for split in self.stage_splits(stage):
            if split not in self.datasets:
                self.datasets[split] = self._build(split)
                new = self.skipped.take_new()
                if new:
                    log.warning("%s split: %d samples kept, skipping %s; every skipped sample is listed in %s",
                                split, len(self.datasets[split]), skip_summary(new), self._list_skips(new))

    def _report_batch_skips(self) -> None:
        """One summary line for the samples skipped for the first time while loading a batch (the
        first ``SKIP_LOG_LINES`` times), all of them written to the skip file."""
        new = self.skipped.take_new()
        if not new:
            return
        where = self._list_skips(new)
        self._skip_lines += 1
        if self._skip_lines <= SKIP_LOG_LINES:
            last = "; further skips are only written there" if self._skip_lines == SKIP_LOG_LINES else ""
            log.warning("skipping %s while loading a batch (%d skipped so far, all listed in %s%s)",
                        skip_summary(new), self.num_skipped, where, last)

    def _list_skips(self, entries: list[tuple[str, str, str]]) -> str:
        """Append ``name, reason, message`` rows to the skip file (module docstring), created on
        the first call; returns where they went, for the log line."""
        try:
            if self.skip_file is None:
                rank, world = rank_and_world()
                run_dir = self.trainer.default_root_dir if self.trainer is not None else None
                name = SKIP_FILE if world == 1 else SKIP_FILE.replace(".tsv", f".rank{rank}.tsv")
                if run_dir is None:
                    name = f"signlab_{os.getpid()}_{name}"
                path = Path(run_dir or tempfile.gettempdir()) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("name\treason\tmessage\n", encoding="utf-8")
                self.skip_file = path
            with self.skip_file.open("a", encoding="utf-8") as f:
                f.writelines("\t".join(" ".join(field.split()) for field in entry) + "\n" for entry in entries)
        except OSError as err:
            return f"no file ({err})"
        return str(self.skip_file)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _consumed_batches(self) -> int:
        """Training batches the trainer has finished in the current epoch (0 without a trainer)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"call setup() before asking for the {split} dataloader")
        data = self.datasets[split]
        options = dict(batch_size=self.batch_size, collate_fn=self.collate_fn, num_workers=self.num_workers)
        if split != "train":
            return SkippingLoader(data, sampler=ShardSampler(len(data), shuffle=False),
                                  on_empty=self._empty_batch, **options)
        sampler = ShardSampler(len(data), shuffle=True, seed=self.seed, epoch_fn=self._current_epoch)
        return ResumableLoader(data, sampler=sampler, consumed_fn=self._consumed_batches,
                               dropped_fn=self._dropped_before, on_empty=self._empty_train_batch, **options)

    def _empty_batch(self, skipped: list[tuple[str, str, str]]) -> None:
        """A batch whose every sample was skipped: recorded and counted, or an error under DDP."""
        if rank_and_world()[1] > 1:  # leaving it out would desynchronise the ranks' batch counts
            detail = "; ".join(message for _, _, message in skipped)
            raise BadSampleError(f"every sample in this batch is unreadable (a batch cannot be left out "
                                 f"under DDP): {detail}")
        record_skips(self.skipped, skipped)
        self._report_batch_skips()
        self.skipped_batches += 1
        log.warning("left out a batch whose %d samples were all skipped (%d such batches so far)",
                    len(skipped), self.skipped_batches)

    def _empty_train_batch(self, skipped: list[tuple[str, str, str]]) -> None:
        self._empty_batch(skipped)
        self._epoch_dropped += 1

    def _dropped_before(self, consumed: int) -> int:
        """Asked as a training epoch starts: how many left-out batches precede the trainer's position,
        the checkpoint's count after a mid-epoch resume, else 0 (a new epoch)."""
        restored, self._restored_dropped = self._restored_dropped, 0
        self._epoch_dropped = restored if consumed else 0
        return self._epoch_dropped

    def state_dict(self) -> dict[str, int]:
        return {"dropped_batches": self._epoch_dropped, "skipped_batches": self.skipped_batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._restored_dropped = int(state.get("dropped_batches", 0))
        self.skipped_batches = int(state.get("skipped_batches", 0))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(split) for split in self.test_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        record_skips(self.skipped, batch.pop("skipped", ()))
        self._report_batch_skips()
        return batch

    @property
    def num_skipped(self) -> int:
        return sum(len(names) for names in self.skipped.values())
