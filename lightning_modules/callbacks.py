"""Reliability callbacks every experiment gets from the CLI (`lightning_modules/cli.py`).

- `ResumeState`: what a Lightning checkpoint leaves out for an exact resume: the global RNG
  states (torch, numpy, random) and the W&B run id (also written to `<run>/wandb_id`).
- `NonFiniteGuard`: a step whose gradients (hence also a NaN/inf loss) are not finite is skipped,
  counted and logged as `train/skipped_steps`, instead of writing NaN into the weights.
- `BadSampleReport`: prints the samples the DataModule skipped, by reason, when fitting ends
  (the models log the running count as `data/skipped`).
- `LearningRateLog`: the learning rates, by param-group name (`lr/euclidean`, `lr/hyperbolic`, or
  `lr` for a model whose groups share one schedule).

Everything a checkpoint carries here is tensors, ints and strings, so checkpoints stay loadable
with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from datamodules.batches import SKIP_EXAMPLES, draw_epoch_seed

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_id"


# ----------------------------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """The global torch, numpy and `random` states as tensors/ints/tuples (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "random": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))


def wandb_run_id(trainer: Trainer) -> str | None:
    """The id of the trainer's W&B run (creating the run if it does not exist yet), else None."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger.version
    return None


class ResumeState(Callback):
    """Global RNG states and the W&B run id, saved with every checkpoint.

    The RNG states are restored right before the first training batch after a resume, not when
    the checkpoint loads: between the two, Lightning builds the training iterator, and a
    DataLoader draws its base seed from the global torch RNG, which the uninterrupted run did
    at the start of the epoch. A checkpoint written after an epoch's last batch (at validation
    end, the usual `last.ckpt`) comes before the next epoch's draw, so after restoring such a
    state the draw is replayed (`draw_epoch_seed`), as the uninterrupted run makes it next.
    """

    def __init__(self) -> None:
        self.wandb_id: str | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._epoch_finished = False  # the last training batch seen ended its epoch
        self._replay_epoch_draw = False

    @property
    def state_key(self) -> str:
        return "ResumeState"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.wandb_id = wandb_run_id(trainer)
        if self.wandb_id is not None:
            self._write_wandb_id(Path(trainer.default_root_dir), self.wandb_id)

    @staticmethod
    @rank_zero_only
    def _write_wandb_id(run_dir: Path, run_id: str) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / WANDB_ID_FILE).write_text(run_id + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(), "wandb_id": self.wandb_id, "epoch_finished": self._epoch_finished}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_rng = state_dict["rng"]
        self._replay_epoch_draw = bool(state_dict.get("epoch_finished", False))  # absent before 2026-11-26

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            if self._replay_epoch_draw:
                draw_epoch_seed()
            self._pending_rng = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._epoch_finished = bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


# ------------------------------------------------------------------------------ NaN/inf steps

@torch.no_grad()
def grads_finite(parameters) -> bool:
    """True when every gradient is finite; one host sync for the whole model. One `_foreach_norm`
    for all gradients (a norm is non-finite iff its tensor holds an inf or NaN) instead of a
    detach and a norm per parameter: about 340 dispatched ops a step for the demo model."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())


class NonFiniteGuard(Callback):
    """Skips an optimizer step whose gradients are not finite (a NaN/inf loss gives such grads).

    Runs in `on_before_optimizer_step` (after backward, the DDP all-reduce and AMP unscaling,
    before clipping): it drops every gradient, so the optimisers leave each parameter and its
    moments untouched. The LR schedule and `global_step` still advance, as they do for a step
    skipped by AMP's GradScaler. The count survives resume and is logged as
    `train/skipped_steps`.
    """

    def __init__(self) -> None:
        self.skipped = 0

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not grads_finite(params):
            self.skipped += 1
            log.warning("non-finite gradient at global step %d: optimizer step skipped (%d so far)",
                        trainer.global_step, self.skipped)
            for p in params:
                p.grad = None
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False,
                      batch_size=1)

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = state_dict["skipped"]


# ------------------------------------------------------------------------------ skipped samples

class BadSampleReport(Callback):
    """Prints the skipped samples by reason when fit ends (each rank its own shard's): the count and
    the first few names per reason, and the file that lists them all (a partial CSL-Daily skips
    ~19k samples, too many for a terminal).

    Reads `datamodule.skipped` (reason -> names), which `on_bad_sample="skip"` DataModules fill,
    `datamodule.skipped_batches` (batches left out because every sample in them was bad) and
    `datamodule.skip_file` (every skipped sample with its message).
    """

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        skipped = getattr(trainer.datamodule, "skipped", None) if trainer.datamodule is not None else None
        if skipped:
            total = sum(len(v) for v in skipped.values())
            batches = getattr(trainer.datamodule, "skipped_batches", 0)
            left_out = f" ({batches} batches of only bad samples left out)" if batches else ""
            lines = []
            for reason, names in sorted(skipped.items()):
                shown = sorted(names)[:SKIP_EXAMPLES]
                more = f", ... ({len(names) - len(shown)} more)" if len(names) > len(shown) else ""
                lines.append(f"  {reason} {len(names)}: {', '.join(shown)}{more}")
            skip_file = getattr(trainer.datamodule, "skip_file", None)
            if skip_file is not None:
                lines.append(f"  all of them: {skip_file}")
            print(f"rank {trainer.global_rank}: skipped {total} bad samples{left_out}:\n" + "\n".join(lines),
                  flush=True)


# ------------------------------------------------------------------------------ learning rates

def learning_rate_keys(groups: list[dict]) -> list[str | None]:
    """The metric key of each param group's learning rate; None for a group drawn by another's curve.

    A group's key is `lr/<its name>`, or `lr` when it has no `name`. Groups with one key (a weight
    decay and a no-decay half of one optimiser) follow one schedule, so the first draws the curve;
    unless they start at different rates, and then each gets its position: `lr/pg1`, `lr/pg2`.
    """
    keys = ["lr" if group.get("name") is None else f"lr/{group['name']}" for group in groups]
    result: list[str | None] = []
    for i, (key, group) in enumerate(zip(keys, groups)):
        sharing = [g for k, g in zip(keys, groups) if k == key]
        if len({g["lr"] for g in sharing}) > 1:
            result.append(f"{key}/pg{i + 1}")
        else:
            result.append(key if group is sharing[0] else None)
    return result


class LearningRateLog(Callback):
    """Logs each optimizer's learning rates under readable keys (`learning_rate_keys`), at the steps
    where Lightning writes the other training metrics (every `log_every_n_steps`), as the rate the
    coming optimizer step uses. Lightning's `LearningRateMonitor` names them `lr-<Optimizer>/pg<i>`
    and stops on two groups of one name, as Geo-Sign's are: do not add it to a config."""

    def __init__(self) -> None:
        self._keys: list[str | None] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._keys = learning_rate_keys(self._groups(trainer))

    @staticmethod
    def _groups(trainer: Trainer) -> list[dict]:
        return [group for optimizer in trainer.optimizers for group in optimizer.param_groups]

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not trainer.loggers or not trainer._logger_connector.should_update_logs:
            return
        rates = {key: float(group["lr"]) for key, group in zip(self._keys, self._groups(trainer)) if key}
        step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step the other metrics are logged at
        for logger in trainer.loggers:
            logger.log_metrics(rates, step=step)
