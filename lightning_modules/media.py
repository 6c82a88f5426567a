"""Pictures and tables for the dashboards, to whichever loggers the trainer has.

W&B gets `wandb.Image` / `wandb.Table`, TensorBoard gets `add_figure` / markdown text, other loggers
(and `logger: false`) get nothing. Only global rank 0 logs; figures are always closed so long runs
do not leak memory.
"""
from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on training nodes
import matplotlib.pyplot as plt  # noqa: E402
from lightning.pytorch import LightningModule  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger  # noqa: E402


def _loggers(module: LightningModule) -> list:
    trainer = module._trainer  # `module.trainer` raises when the module is not attached
    if trainer is None or not trainer.is_global_zero:
        return []
    return list(trainer.loggers)


def log_figure(module: LightningModule, key: str, fig: plt.Figure) -> None:
    """Log a matplotlib figure under `key` at the current global step, then close it."""
    try:
        for logger in _loggers(module):
            if isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log({key: wandb.Image(fig), "trainer/global_step": module.global_step})
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(key, fig, global_step=module.global_step)
    finally:
        plt.close(fig)


def log_table(module: LightningModule, key: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Log a small table (e.g. sample translations) under `key` at the current global step."""
    for logger in _loggers(module):
        if isinstance(logger, WandbLogger):
            logger.log_table(key=key, columns=columns, data=rows, step=module.global_step)
        elif isinstance(logger, TensorBoardLogger):
            header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
            body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in rows)
            logger.experiment.add_text(key, header + body, global_step=module.global_step)
