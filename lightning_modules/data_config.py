"""A config's DataModule without its model: what `lightning validate_data` and `lightning
convert_stream` work on.

The config goes through `SignLabCLI`'s own parser, as `lightning fit` reads it: `--config` files
merged left to right, command-line overrides, `${...}` interpolations resolved, class defaults
filled in. Nothing is checked, instantiated or run beyond that, so a missing dataset is for the
command to report.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule

from lightning_modules.cli import SignLabCLI
from lightning_modules.config_errors import ConfigError, import_class


class _ParseOnly(SignLabCLI):
    """SignLabCLI that parses and resolves the config, then stops."""

    def parse_arguments(self, parser, args) -> None:
        # Lightning's own warns that `args` differ from sys.argv, which here holds the command's own options
        self.config = parser.parse_args(args)

    def _set_seed(self) -> None:
        """Nothing: no run."""

    def before_instantiate_classes(self) -> None:
        """Nothing: the file checks and run-folder settings are for runs."""

    def instantiate_classes(self) -> None:
        """Nothing: the caller builds what it needs."""

    def _run_subcommand(self, subcommand: str) -> None:
        """Nothing."""


def resolve_data_config(args: list[str]) -> tuple[type[LightningDataModule], dict[str, Any]]:
    """The DataModule class and its init args that ``lightning fit ARGS`` would use."""
    config = _ParseOnly(args=["fit", *args]).config["fit"]
    data = config.get("data")
    if data is None:
        raise ConfigError(f"{' '.join(args)}: the config has no data section")
    cls = import_class(data.class_path)
    if cls is None:
        raise ConfigError(f"{' '.join(args)}: data.class_path {data.class_path!r} does not import")
    init_args = data.get("init_args")
    return cls, init_args.as_dict() if init_args is not None else {}


def datamodule_from_config(args: list[str], drop: tuple[str, ...] = ()) -> LightningDataModule:
    """The config's DataModule (``resolve_data_config``), built without the init args named in
    ``drop``; a value its class refuses is a ConfigError naming the class."""
    cls, init_args = resolve_data_config(args)
    try:
        return cls(**{key: value for key, value in init_args.items() if key not in drop})
    except ValueError as err:
        raise ConfigError(f"data ({cls.__name__}): {err}") from err
