"""A tiny real model and data module the CLI tests train through the `lightning` script.

Small enough that a fit of a few steps takes a second, real enough that resume and checkpointing
are exercised (an optimiser with state, a scheduler, a monitored validation metric).
"""
from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule
from torch.utils.data import DataLoader, TensorDataset


class TinyRegressor(LightningModule):
    def __init__(self, dim: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=5)}


class TinyData(LightningDataModule):
    def __init__(self, dim: int = 8, samples: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(samples, dim, generator=g)
        self.data = TensorDataset(x, x.sum(-1).sin())
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)


class DenormalProbe(Callback):
    """Writes what 1e-39 · 1 gives in float32 when training starts: 0.0 where denormals are flushed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        Path(self.path).write_text(repr((torch.tensor(1e-39) * 1.0).item()))
