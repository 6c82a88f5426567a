"""Pictures and tables for the dashboards, to whichever loggers the trainer has.

W&B gets `wandb.Image` / `wandb.Table`, TensorBoard gets `add_figure` / markdown text, CSVLogger
gets files beside its `metrics.csv`: `<log_dir>/media/<key>/step_<global step>.png` or `.csv`. Any
other logger gets none, said once per logger type; `logger: false` gets none. Only global rank 0
logs; figures are always closed so long runs do not leak memory.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on training nodes
import matplotlib.pyplot as plt  # noqa: E402
from lightning.pytorch import LightningModule  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger  # noqa: E402

log = logging.getLogger(__name__)

_told_skipped: set[type] = set()  # logger types already told that they get no media


def _loggers(module: LightningModule) -> list:
    trainer = module._trainer  # `module.trainer` raises when the module is not attached
    if trainer is None or not trainer.is_global_zero:
        return []
    return list(trainer.loggers)


def _media_file(logger: CSVLogger, key: str, step: int, suffix: str) -> Path:
    path = Path(logger.log_dir) / "media" / key / f"step_{step}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _skip(logger: Logger) -> None:
    if type(logger) not in _told_skipped:
        _told_skipped.add(type(logger))
        log.info("%s gets no figures or tables (W&B, TensorBoard and CSVLogger do)", type(logger).__name__)


def log_figure(module: LightningModule, key: str, fig: plt.Figure) -> None:
    """Log a matplotlib figure under `key` at the current global step, then close it."""
    try:
        for logger in _loggers(module):
            if isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log({key: wandb.Image(fig), "trainer/global_step": module.global_step})
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(key, fig, global_step=module.global_step)
            elif isinstance(logger, CSVLogger):
                fig.savefig(_media_file(logger, key, module.global_step, ".png"))
            else:
                _skip(logger)
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
        elif isinstance(logger, CSVLogger):
            with _media_file(logger, key, module.global_step, ".csv").open("w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows([columns, *rows])
        else:
            _skip(logger)
