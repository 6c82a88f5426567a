"""``GlossToPoseDataModule``: gloss sequences -> PT 50-joint skeletons (``.skels``).

Batch keys are documented in ``datamodules/batches.py``. Datasets:

- ``phoenix2014t``: ``pt_dir/{train,dev,test}.{skels,gloss,text,files}`` (Progressive
  Transformers layout). Use ``gloss_vocab: <pt_dir>/train.gloss`` (or a saved vocab JSON).
- ``synthsign``: generated into ``data_dir`` by ``prepare_data``; read from ``data_dir/pt``
  through the same reader.

Every split is parsed in ``setup``, so all errors surface before training: missing files and
line counts that disagree across the four files always raise; a bad sample (a ``.skels`` line
whose value count is not a multiple of 151, empty, non-numeric, NaN/inf or whose counter column
is not i/T, i.e. shifted; a line of any of the four files that is not UTF-8; an empty gloss,
text or name) raises naming the file, line and sample, or with ``on_bad_sample="skip"`` is
dropped, logged and counted in ``self.skipped``. The files are read as UTF-8 whatever the
locale, a byte-order mark tolerated.
As in PT (``max_sent_length``), training sequences longer than ``max_frames`` are dropped
(counted in ``self.num_too_long``); dev/test keep every sequence. The counter column is
checked, then dropped (it is i/T, recomputable from the mask).

The gloss vocabulary comes from ``load_gloss_vocab(gloss_vocab)`` in ``__init__`` (the
production models take the same spec) and is saved as ``gloss_vocab.json`` in the run folder
(the trainer's ``default_root_dir``) at ``setup``. DDP: see ``SplitDataModule`` in ``datamodules/batches.py``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset

from datamodules.batches import SplitDataModule, check_on_bad_sample, collate_production, record_skips
from datamodules.formats import read_pt_split
from datamodules.tokenization import GlossVocab, load_gloss_vocab

log = logging.getLogger(__name__)

DATASETS = ("phoenix2014t", "synthsign")


class GlossPoseDataset(Dataset):
    """In-memory PT samples; a key is an index or ``(index, epoch)`` (epoch unused)."""

    def __init__(self, samples: list[dict], vocab: GlossVocab):
        self.samples, self.vocab = samples, vocab

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        sample = self.samples[key[0] if isinstance(key, tuple) else key]
        return {"poses": torch.from_numpy(sample["poses"]),  # (T, 50, 3)
                "gloss_ids": torch.tensor(self.vocab.encode(sample["gloss"]), dtype=torch.long),
                "gloss": sample["gloss"], "text": sample["text"], "name": sample["name"]}


class GlossToPoseDataModule(SplitDataModule):
    """Gloss -> pose data for PoseVQ-Diffusion (see the module docstring for layouts).

    ``synthsign_kwargs`` go to ``ensure_synthsign`` (corpus size, seed, language mode).
    """

    def __init__(self, dataset: str = "synthsign", data_dir: str = "data/synthsign",
                 pt_dir: str | None = None, gloss_vocab: str = "synthsign",
                 max_frames: int = 300,  # PT's max_sent_length: longer train sequences dropped
                 batch_size: int = 8, num_workers: int = 0, on_bad_sample: str = "raise",
                 seed: int = 0, synthsign_kwargs: dict | None = None):
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        if dataset != "synthsign" and pt_dir is None:
            raise ValueError(f"dataset {dataset!r} needs pt_dir")
        if dataset != "synthsign" and gloss_vocab == "synthsign":
            raise ValueError(f"dataset {dataset!r} needs its own gloss_vocab (e.g. "
                             f"{pt_dir}/train.gloss), not the SynthSign lexicon")
        if max_frames <= 0 or batch_size <= 0:
            raise ValueError("max_frames and batch_size must be positive")
        self.save_hyperparameters()
        self.dataset, self.data_dir = dataset, Path(data_dir)
        self.synthsign_kwargs = dict(synthsign_kwargs or {})
        self.pt_dir = Path(pt_dir) if pt_dir else self.data_dir / "pt"
        self.max_frames, self.batch_size, self.num_workers, self.seed = (
            max_frames, batch_size, num_workers, seed)
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        self.gloss_vocab = load_gloss_vocab(gloss_vocab)
        self.num_too_long = 0
        self.collate_fn = collate_production

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        trainer = self.trainer
        if trainer is None:
            return
        if trainer.is_global_zero:  # the run folder, beside config.yaml, whichever logger writes where
            run = Path(trainer.default_root_dir)
            run.mkdir(parents=True, exist_ok=True)
            self.gloss_vocab.save(run / "gloss_vocab.json")

    def _build(self, split: str) -> GlossPoseDataset:
        samples, skipped = read_pt_split(self.pt_dir, split, self.on_bad_sample)
        record_skips(self.skipped, [(name, "invalid", message) for name, message in skipped])
        if split == "train":
            kept = [s for s in samples if len(s["poses"]) <= self.max_frames]
            self.num_too_long += len(samples) - len(kept)
            if len(kept) < len(samples):
                log.info("%s: dropped %d training sequences longer than max_frames=%d",
                         self.pt_dir, len(samples) - len(kept), self.max_frames)
            samples = kept
            unknown = sum(g not in self.gloss_vocab.stoi for s in samples for g in s["gloss"])
            if unknown:
                log.warning("%s: %d training glosses are not in the gloss vocabulary (-> <unk>)",
                            self.pt_dir, unknown)
        if not samples:
            raise ValueError(f"{self.pt_dir}: no usable {split} samples")
        return GlossPoseDataset(samples, self.gloss_vocab)
