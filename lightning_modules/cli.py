"""The `lightning` console script: LightningCLI with signlab's run-folder conventions.

    lightning fit --config experiments/demo/geosign_token.yaml
    lightning fit --config experiments/demo/geosign_token.yaml --ckpt_path last
    lightning test --config experiments/demo/geosign_token.yaml --ckpt_path best

Every run lives in `trainer.default_root_dir` (the YAMLs set `runs/<experiment>`): checkpoints in
`<run>/checkpoints/` (`last.ckpt` plus the best by the monitored metric), the resolved config in
`<run>/config.yaml` (whichever logger), W&B files under `<run>/wandb/`. Other loggers come from an
overlay: `--config experiments/loggers/csv.yaml` (or `tensorboard.yaml`, the `tensorboard` extra).

What differs from plain LightningCLI, and why:
- Check before you spend: the files a config names (dataset, label files, weights) are checked
  before any model, dataset or logger run is built (`preflight.py`), and a wrong value is one
  line naming the key and what it accepts instead of the usage text or a traceback
  (`config_errors.py`); both exit with code 2.
- `lightning validate_data` and `lightning convert_stream` work on a config's dataset alone
  (`validate_data.py`, `convert_stream.py`).
- `--ckpt_path last` resolves to `<run>/checkpoints/last.ckpt` and fails with an error naming that
  folder when nothing is there; Lightning would warn and silently train from scratch.
  `--ckpt_path best` resolves to the run's best checkpoint by the monitored metric, as recorded in
  `last.ckpt` (Lightning's `best` only works in the process that trained).
  `--ckpt_path last_good` is the newest checkpoint of the folder that passes its checksum and
  loads as data: the explicit fallback when `last.ckpt` is damaged (never taken silently).
- Checkpoints are data (`checkpoint_io.py`): every load, the W&B-id lookup included, is
  `weights_only=True` after a checksum check; an unsafe or damaged file stops the run naming it.
- One writer per run folder: `fit` holds an `flock` on `<run>/fit.lock`; a second `fit` in the
  same folder stops at once, naming the PID of the one that holds it.
- The resolved config is overwritten on a second run in the same folder (Lightning #7679 makes
  that an error), is written to the run folder whatever the logger (Lightning writes it to a CSV or
  TensorBoard logger's `version_<n>` folder) and is also sent to the W&B run config (Lightning
  #14628).
- Every run logs its learning rates by param-group name (`lr/euclidean`, `lr/hyperbolic`, `lr`).
- `WANDB_MODE` from the environment wins over a YAML's `offline: true`.
- With `--ckpt_path path/to/file.ckpt` the config and command line still define the model, as
  with `last` and `best`: Lightning 2.6 re-applies the checkpoint's saved hyperparameters over
  them for a file path, so `--model.init_args.back_translator_ckpt ...` or `sample_steps` were
  silently dropped (upstream PR #21455 is open). Weights that do not fit the configured model
  still fail loudly when the state dict is loaded.
- Every run gets exact, crash-safe resume (`lightning_modules/callbacks.py`,
  `checkpoint_io.py`): `last.ckpt` is also written every `step_checkpoint.every_n_train_steps`
  optimizer steps, checkpoints carry the RNG states and the W&B run id, writes are atomic, a
  non-finite step is skipped (`train/skipped_steps`) and skipped bad samples are reported.
  On `--ckpt_path last` the W&B logger continues the checkpoint's run id.
- `validate`, `test` and `predict` log into the W&B run of the checkpoint they evaluate, else of
  the run folder's last fit (`<run>/wandb_id`), so their scores land on the training dashboard;
  `--new_wandb_run true` starts a run of their own, and an `id` in the logger's config wins.
"""
from __future__ import annotations

import fcntl
import importlib
import importlib.util
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from jsonargparse import set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import CheckpointIO
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_modules.callbacks import (WANDB_ID_FILE, BadSampleReport, LearningRateLog, NonFiniteGuard,
                                         ResumeState)
from lightning_modules.checkpoint_io import AtomicCheckpointIO, CheckpointError, check_checkpoint, load_checkpoint_file
from lightning_modules.config_errors import ConfigError, SignLabArgumentParser, debug_requested, refused_value_message
from lightning_modules.preflight import check_config

log = logging.getLogger(__name__)

CHECKPOINT_DIRNAME = "checkpoints"
LOCK_FILE = "fit.lock"  # in the run folder; holds the PID of the fit that has it locked
STEP_CHECKPOINT_EVERY = 100  # optimizer steps between mid-epoch `last.ckpt` saves (a crash loses at most these)
SIGNLAB_PACKAGES = ("lightning_modules", "datamodules", "generation", "translation", "geometry")
DESCRIPTION = ("signlab: sign language translation and production experiments (LightningCLI). Also: "
               "`lightning validate_data --config CONFIG` reports the config's dataset; "
               "`lightning convert_stream --config CONFIG --out DIR` writes it as litdata chunks.")
# Commands on a config's dataset alone (no model, trainer or logger): module with `main(argv) -> exit code`
DATA_COMMANDS = {"validate_data": "lightning_modules.validate_data", "convert_stream": "lightning_modules.convert_stream"}


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` follows every save point. Lightning 2.6 refreshes `last`
    only when a top-k checkpoint was saved at that step, so a monitored metric that stops improving
    would leave `last.ckpt` behind the run (and `--ckpt_path last` would lose the epochs since)."""

    def _save_last_if_stale(self, trainer: Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)


def validation_follows(trainer: Trainer) -> bool:
    """True on a training batch that ends an epoch whose validation runs next (Lightning's own test,
    with which ModelCheckpoint defers a monitored save to validation end)."""
    if not (trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and trainer.enable_validation):
        return False
    batches = trainer.num_val_batches
    every = trainer.check_val_every_n_epoch
    return bool(sum(batches) if isinstance(batches, list) else batches) and (
        every is None or (trainer.current_epoch + 1) % every == 0)


class StepCheckpoint(ModelCheckpoint):
    """The mid-epoch `last.ckpt` saves, except on a batch that ends an epoch whose validation runs
    next. The validation-end `last.ckpt` follows at once there, and a checkpoint from before that
    validation cannot resume exactly if the run dies in it: Lightning does not rerun it, so the
    random draws it made (its loader's seed, a sampler's noise) would be missing. The previous step
    checkpoint resumes exactly instead."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if not validation_follows(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class SaveConfigToRun(SaveConfigCallback):
    """Writes `<run>/config.yaml` (overwriting) and sends the resolved config to W&B: a fit's at the
    top of the run config, a validate/test/predict's under its own name (`test: {...}`), so that
    evaluating into the fit's run (`SignLabCLI._continue_wandb_run`) keeps the fit's config there.
    Built with `save_to_log_dir=False`: Lightning's own file goes to `trainer.log_dir`, which is
    a `version_<n>` folder under a CSV or TensorBoard logger."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, run_dir / self.config_filename, skip_unset=False,
                         overwrite=self.overwrite, multifile=self.multifile)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # Flatten jsonargparse's Namespace into plain types wandb can store.
                config = self.config.as_dict()
                logger.experiment.config.update(config if stage == "fit" else {stage: config},
                                                allow_val_change=True)


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


def resolve_last_good_checkpoint(run_dir: str | os.PathLike) -> str:
    """The newest checkpoint in the run's folder that passes its checksum and loads weights-only
    (each one passed over is logged with its reason); an error naming the folder if none does."""
    folder = checkpoint_dir(run_dir)
    for path in sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            check_checkpoint(path)
        except CheckpointError as err:
            log.warning("--ckpt_path last_good: passing over %s", err)
            continue
        return str(path)
    raise FileNotFoundError(f"--ckpt_path last_good: no checkpoint in {folder.resolve()} passes its checksum "
                            "and loads as data")


def resolve_best_checkpoint(run_dir: str | os.PathLike) -> str:
    """The best checkpoint recorded by the run's monitored `checkpoint` callback (its state in
    `last.ckpt`); an error naming the folder if the run has none. Lightning's own `best` only
    knows the checkpoints of the current process."""
    last = resolve_last_checkpoint(run_dir)
    states = load_checkpoint_file(last, mmap=True).get("callbacks", {})
    best = [state["best_model_path"] for key, state in states.items()
            if "'monitor': None" not in key and state.get("best_model_path")]
    if not best or not Path(best[0]).is_file():
        raise FileNotFoundError(f"--ckpt_path best: {last} records no best checkpoint that still exists "
                                f"({best[0] if best else 'no monitored checkpoint'}); use --ckpt_path last")
    return best[0]


class RunFolderBusyError(RuntimeError):
    """Another process is fitting in this run folder."""


@contextmanager
def run_folder_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive `flock` on `<run>/fit.lock` for the block: one writer per run folder. A
    second holder fails at once with an error naming the first one's PID. The kernel drops the
    lock when its process dies, so a killed fit never leaves the folder locked."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderBusyError(
                f"run folder {Path(run_dir).resolve()} is in use by another fit (PID {holder}); its "
                "checkpoints would be overwritten. Wait for it, stop it, or set another "
                "trainer.default_root_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


class SignLabCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        # "omegaconf+" resolves `${...}` once on the merged config, so a command-line override
        # (`--trainer.default_root_dir runs/x`) reaches every value interpolated from it (the
        # logger's save_dir); YAMLs keep writing absolute keys such as `${trainer.default_root_dir}`.
        set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigToRun,
            save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
            parser_class=SignLabArgumentParser,
            parser_kwargs={"parser_mode": "omegaconf+", "description": DESCRIPTION},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The run's checkpoint callback is part of the CLI so that every experiment gets the same
        # folder layout; YAMLs tune it under `checkpoint:` (monitor, mode, every_n_train_steps).
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        # No version counter: both checkpoints below overwrite the one `last.ckpt` (not `last-v1.ckpt`).
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "{epoch}-{step}",
                             "checkpoint.enable_version_counter": False})
        # A second, unmonitored checkpoint only refreshes `last.ckpt` every N optimizer steps, so a
        # crash mid-epoch resumes from there (the monitored one saves at validation only).
        parser.add_lightning_class_args(StepCheckpoint, "step_checkpoint")
        parser.set_defaults({"step_checkpoint.every_n_train_steps": STEP_CHECKPOINT_EVERY,
                             "step_checkpoint.save_top_k": 0, "step_checkpoint.save_last": True,
                             "step_checkpoint.enable_version_counter": False})
        parser.add_argument("--new_wandb_run", type=bool, default=False,
                            help="log to a new W&B run instead of the one this command continues: the "
                                 "checkpoint's, or for validate/test/predict the run folder's last fit")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_config(config, self.subcommand)  # before any model, dataset or logger run is built
        run_dir = config.trainer.default_root_dir or os.getcwd()
        for section in (config.checkpoint, config.step_checkpoint):
            if section.dirpath is None:
                section.dirpath = str(checkpoint_dir(run_dir))
        self._respect_wandb_mode(config)
        self._require_logger_packages(config)

    def instantiate_classes(self) -> None:
        """Lightning's; a value a class refuses (a ValueError from its `__init__`, which jsonargparse
        wraps in its union report) becomes a ConfigError (`main` prints it without a traceback)."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            if debug_requested():
                raise
            raise ConfigError(refused_value_message(err)) from err

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        plugins = trainer_config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        # Not parser arguments: they have no settings, and no experiment should run without them.
        # ResumeState goes first: its RNG restore must precede every other batch-start hook.
        callbacks = trainer_config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        kwargs["callbacks"] = [ResumeState(), *callbacks, NonFiniteGuard(), BadSampleReport(), LearningRateLog()]
        return super().instantiate_trainer(**kwargs)

    @staticmethod
    def _logger_configs(config) -> list:
        loggers = config.trainer.logger
        return loggers if isinstance(loggers, list) else [loggers]

    @classmethod
    def _respect_wandb_mode(cls, config) -> None:
        env_mode = os.environ.get("WANDB_MODE")
        if env_mode is None:
            return
        for logger in cls._logger_configs(config):
            if getattr(logger, "class_path", "").endswith("WandbLogger"):
                # Lightning's offline=True overwrites WANDB_MODE process-wide; the user's choice wins.
                logger.init_args.offline = env_mode in ("offline", "dryrun")

    @classmethod
    def _require_logger_packages(cls, config) -> None:
        """Lightning's own error for a missing tensorboard names no way to get it."""
        for logger in cls._logger_configs(config):
            if (getattr(logger, "class_path", "").endswith("TensorBoardLogger")
                    and importlib.util.find_spec("tensorboard") is None
                    and importlib.util.find_spec("tensorboardX") is None):
                raise ModuleNotFoundError("TensorBoardLogger needs the tensorboard package, an optional "
                                          "extra of signlab: pip install -e '.[tensorboard]'")

    def _parse_ckpt_path(self) -> None:
        """Nothing: the checkpoint gives weights and training state, never init args (see the module docstring)."""

    def _resolve_ckpt_path(self) -> None:
        config = self.config_init[self.subcommand]
        resolve = {"last": resolve_last_checkpoint, "best": resolve_best_checkpoint,
                   "last_good": resolve_last_good_checkpoint}.get(config.get("ckpt_path"))
        if resolve is not None:
            config["ckpt_path"] = resolve(self.trainer.default_root_dir)
        if config.get("ckpt_path") and hasattr(self.model, "init_from_done"):
            self.model.init_from_done = True  # the checkpoint's weights win over `init_from`

    def before_fit(self) -> None:
        self._resolve_ckpt_path()
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path"):
            self._continue_wandb_run()

    def fit(self, **kwargs) -> None:
        """`trainer.fit` holding the run folder's lock (rank 0 only: DDP's other ranks are this
        same fit, started by it)."""
        if rank_zero_only.rank != 0:
            self.trainer.fit(**kwargs)
            return
        with run_folder_lock(self.trainer.default_root_dir):
            self.trainer.fit(**kwargs)

    def _continue_wandb_run(self) -> None:
        """Point the W&B logger at the checkpoint's run id, else at the run folder's last fit's (its
        experiment is created later, lazily); not with `--new_wandb_run true` or an `id` in the config."""
        config = self.config_init[self.subcommand]
        loggers = [lg for lg in self.trainer.loggers if isinstance(lg, WandbLogger)]
        if (not loggers or loggers[0]._experiment is not None or loggers[0]._id is not None
                or config.get("new_wandb_run")):
            return
        run_id = None
        if config.get("ckpt_path"):
            checkpoint = load_checkpoint_file(config["ckpt_path"], mmap=True, weights_only=config.get("weights_only"))
            run_id = checkpoint.get("callbacks", {}).get("ResumeState", {}).get("wandb_id")
        id_file = Path(self.trainer.default_root_dir) / WANDB_ID_FILE
        if run_id is None and id_file.is_file():
            run_id = id_file.read_text().strip() or None
        if run_id is not None:
            loggers[0]._id = run_id
            loggers[0]._wandb_init["id"] = run_id

    def before_validate(self) -> None:
        self._resolve_ckpt_path()
        self._continue_wandb_run()

    def before_test(self) -> None:
        self._resolve_ckpt_path()
        self._continue_wandb_run()

    def before_predict(self) -> None:
        self._resolve_ckpt_path()
        self._continue_wandb_run()

    def _finish_wandb_run(self) -> None:
        """End the W&B run before the command returns. A wandb service this process shares with its
        parent (one that logs to W&B itself and exported `WANDB_SERVICE`) outlives the command and,
        without a finish, keeps the run open: the next command of the same run (a resume, a test
        after the fit) finds its id in use, and the offline `.wandb` file stays unwritten."""
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None and rank_zero_only.rank == 0:
                logger.experiment.finish()

    after_fit = after_validate = after_test = after_predict = _finish_wandb_run


def show_signlab_logs() -> None:
    """signlab's own INFO messages (what init_from loaded, caches built, samples skipped) on
    stderr, as Lightning shows its own; other libraries keep their levels."""
    for package in SIGNLAB_PACKAGES:
        logger = logging.getLogger(package)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)


def main(args: list[str] | None = None) -> None:
    """`lightning ...`: a config problem (a missing file, a wrong value) is one message and exit code 2;
    `JSONARGPARSE_DEBUG=true` shows the traceback instead."""
    show_signlab_logs()
    if args is None:  # the `lightning` command, whose process is ours (in-process callers keep their float mode)
        # Denormal floats (|x| < 1.2e-38) cost the CPU ~100x a normal one; mT5's attention softmax
        # makes more of them as it sharpens, and a demo step grew 4% (baseline) to 8% (pooled) over
        # 600 steps until they were flushed to zero (docs/performance.md). No GPU kernel is affected.
        torch.set_flush_denormal(True)
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] in DATA_COMMANDS:
            sys.exit(importlib.import_module(DATA_COMMANDS[argv[0]]).main(argv[1:]))
        SignLabCLI(args=args)
    except ConfigError as err:
        if debug_requested():
            raise
        sys.stderr.write(f"lightning: {err}\n")
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
