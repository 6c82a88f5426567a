"""The `lightning` console script: LightningCLI with signlab's run-folder conventions.

    lightning fit --config experiments/demo/geosign_token.yaml
    lightning fit --config experiments/demo/geosign_token.yaml --ckpt_path last
    lightning test --config experiments/demo/geosign_token.yaml --ckpt_path best

Every run lives in `trainer.default_root_dir` (the YAMLs set `runs/<experiment>`): checkpoints in
`<run>/checkpoints/` (`last.ckpt` plus the best by the monitored metric), the resolved config in
`<run>/config.yaml`, W&B files under `<run>/wandb/`.

What differs from plain LightningCLI, and why:
- `--ckpt_path last` resolves to `<run>/checkpoints/last.ckpt` and fails with an error naming that
  folder when nothing is there; Lightning would warn and silently train from scratch.
- The resolved config is overwritten on a second run in the same folder (Lightning #7679 makes
  that an error) and is also sent to the W&B run config (Lightning #14628).
- `WANDB_MODE` from the environment wins over a YAML's `offline: true`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

CHECKPOINT_DIRNAME = "checkpoints"
DESCRIPTION = "signlab: sign language translation and production experiments (LightningCLI)"


class SaveConfigToRun(SaveConfigCallback):
    """Writes `<run>/config.yaml` (overwriting) and sends the resolved config to W&B."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # Flatten jsonargparse's Namespace into plain types wandb can store.
                logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_DIRNAME


def resolve_last_checkpoint(run_dir: str | os.PathLike) -> str:
    """Newest `last*.ckpt` in the run's checkpoint folder; an error naming the folder if none."""
    folder = checkpoint_dir(run_dir)
    candidates = sorted(folder.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(
            f"--ckpt_path last: no last*.ckpt in {folder.resolve()}. Nothing to resume; drop "
            "--ckpt_path to start a new run, or point trainer.default_root_dir at the run to resume."
        )
    return str(candidates[-1])


class SignLabCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigToRun,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "omegaconf", "description": DESCRIPTION},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The run's checkpoint callback is part of the CLI so that every experiment gets the same
        # folder layout; YAMLs tune it under `checkpoint:` (monitor, mode, every_n_train_steps).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "{epoch}-{step}"})

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        run_dir = config.trainer.default_root_dir or os.getcwd()
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(checkpoint_dir(run_dir))
        self._respect_wandb_mode(config)

    @staticmethod
    def _respect_wandb_mode(config) -> None:
        env_mode = os.environ.get("WANDB_MODE")
        if env_mode is None:
            return
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if getattr(logger, "class_path", "").endswith("WandbLogger"):
                # Lightning's offline=True overwrites WANDB_MODE process-wide; the user's choice wins.
                logger.init_args.offline = env_mode in ("offline", "dryrun")

    def _resolve_ckpt_path(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = resolve_last_checkpoint(self.trainer.default_root_dir)

    def before_fit(self) -> None:
        self._resolve_ckpt_path()

    def before_validate(self) -> None:
        self._resolve_ckpt_path()

    def before_test(self) -> None:
        self._resolve_ckpt_path()

    def before_predict(self) -> None:
        self._resolve_ckpt_path()


def main(args: list[str] | None = None) -> None:
    SignLabCLI(args=args)


if __name__ == "__main__":
    main(sys.argv[1:])
