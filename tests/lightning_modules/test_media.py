"""Figures and tables for loggers without W&B's media: files beside a CSVLogger's metrics, and one
line saying a logger that takes none gets none."""
from __future__ import annotations

import csv
import logging

import matplotlib.pyplot as plt
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, Logger

from lightning_modules import media


class _MetricsOnly(Logger):
    name = "metrics-only"
    version = 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        pass


def _module_with(loggers: list[Logger]) -> LightningModule:
    module = LightningModule()
    module.trainer = Trainer(logger=loggers, accelerator="cpu", enable_progress_bar=False)
    return module


def test_csv_logger_gets_media_as_files(tmp_path):
    logger = CSVLogger(tmp_path, name="csv")
    module = _module_with([logger])
    fig = plt.figure()
    media.log_figure(module, "val/picture", fig)
    media.log_table(module, "val/samples", ["name", "text"], [["a", 'says "hi", twice'], ["b", "é"]])
    assert not plt.fignum_exists(fig.number)
    folder = tmp_path / "csv" / "version_0" / "media" / "val"
    assert (folder / "picture" / "step_0.png").read_bytes()[:4] == b"\x89PNG"
    with (folder / "samples" / "step_0.csv").open(newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["name", "text"], ["a", 'says "hi", twice'], ["b", "é"]]


def test_a_logger_without_media_is_told_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(media, "_told_skipped", set())
    module = _module_with([_MetricsOnly()])
    with caplog.at_level(logging.INFO, logger="lightning_modules.media"):
        media.log_figure(module, "val/picture", plt.figure())
        media.log_table(module, "val/samples", ["name"], [["a"]])
    lines = [r.getMessage() for r in caplog.records if r.name == "lightning_modules.media"]
    assert lines == ["_MetricsOnly gets no figures or tables (W&B, TensorBoard and CSVLogger do)"]
