"""Learning rates on the dashboards: the names of Geo-Sign's param groups, the keys they get, and
what `LearningRateLog` writes to a logger step by step."""
from __future__ import annotations

import csv

import pytest
import torch
from geoopt.optim import RiemannianAdam
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.callbacks import LearningRateLog, learning_rate_keys
from lightning_modules.optim import JointOptimizer


def _joint() -> JointOptimizer:
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    adamw = torch.optim.AdamW([{"params": [a.weight]}, {"params": [a.bias], "weight_decay": 0.0}], lr=1e-2)
    return JointOptimizer([adamw, RiemannianAdam(b.parameters(), lr=1e-3)])


def test_joint_optimizer_names_groups_by_what_they_train():
    assert [g["name"] for g in _joint().param_groups] == ["euclidean", "euclidean", "hyperbolic"]


def test_group_names_come_back_after_loading_a_checkpoint_saved_without_them():
    saved = _joint().state_dict()
    for inner in saved["optimizers"]:
        for group in inner["param_groups"]:
            del group["name"]
    joint = _joint()
    joint.load_state_dict(saved)
    assert [g["name"] for g in joint.param_groups] == ["euclidean", "euclidean", "hyperbolic"]


@pytest.mark.parametrize("groups, keys", [
    # Geo-Sign: decay and no-decay halves of each optimiser, one curve each
    ([{"name": "euclidean", "lr": 1.0}, {"name": "euclidean", "lr": 1.0}, {"name": "hyperbolic", "lr": 2.0},
      {"name": "hyperbolic", "lr": 2.0}], ["lr/euclidean", None, "lr/hyperbolic", None]),
    # one AdamW of two unnamed groups on one schedule (Pose-VQVAE, PoseVQ-Diffusion, back-translator)
    ([{"lr": 3.0}, {"lr": 3.0}], ["lr", None]),
    # unnamed groups at different rates are not drawn as one
    ([{"lr": 3.0}, {"lr": 1.0}], ["lr/pg1", "lr/pg2"]),
    ([{"name": "x", "lr": 1.0}, {"lr": 1.0}, {"name": "x", "lr": 2.0}], ["lr/x/pg1", "lr", "lr/x/pg3"]),
])
def test_learning_rate_keys(groups, keys):
    assert learning_rate_keys(groups) == keys


class _TwoSpeeds(LightningModule):
    """Geo-Sign's optimiser shape: AdamW (two groups) with a decaying schedule, Riemannian Adam constant."""

    def __init__(self) -> None:
        super().__init__()
        self.euclidean, self.hyperbolic = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.hyperbolic(self.euclidean(batch[0])).pow(2).mean()

    def configure_optimizers(self):
        adamw = torch.optim.AdamW([{"params": [self.euclidean.weight]},
                                   {"params": [self.euclidean.bias], "weight_decay": 0.0}], lr=0.1)
        joint = JointOptimizer([adamw, RiemannianAdam(self.hyperbolic.parameters(), lr=0.01)])
        halving = lambda step: 0.5 ** step  # noqa: E731
        scheduler = LambdaLR(joint, [halving, halving, lambda step: 1.0])
        return {"optimizer": joint, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_learning_rates_reach_the_logger_at_the_logged_steps(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(12, 4)), batch_size=2)  # 6 steps
    trainer = Trainer(max_epochs=1, log_every_n_steps=2, logger=CSVLogger(tmp_path, name="", version=""),
                      callbacks=[LearningRateLog()], enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu")
    trainer.fit(_TwoSpeeds(), data)
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"step", "lr/euclidean", "lr/hyperbolic"}
    # Every log_every_n_steps steps, the rate the coming optimizer step uses.
    logged = {int(r["step"]): (float(r["lr/euclidean"]), float(r["lr/hyperbolic"])) for r in rows}
    assert logged == {1: (0.1 * 0.5, 0.01), 3: (0.1 * 0.5 ** 3, 0.01), 5: (0.1 * 0.5 ** 5, 0.01)}
