"""Check before you spend: the files a parsed config names, checked before anything is built.

`SignLabCLI.before_instantiate_classes` calls `check_config` after parsing and before the model
(mT5, a VQ-VAE checkpoint) is loaded, the dataset is read or a logger run (W&B) is created, so a
wrong path costs seconds, not a model load and an empty W&B run. Every problem found is listed
in one `ConfigError`, each as `key: 'path' what is wrong`.

What is checked, wherever the key appears under `model.init_args` or `data.init_args`:
- weights files: `init_from` (a local file, or a well-formed `hf://` reference, not fetched
  here; skipped when `--ckpt_path` resumes, whose weights win), `vqvae_ckpt`,
  `back_translator_ckpt`, and an explicit `--ckpt_path` file;
- `mt5_pretrained` and `tokenizer`: a local path must exist; a Hub id is accepted as such, except
  that under `HF_HUB_OFFLINE=1` an `mt5_pretrained` id must be in the Hugging Face cache;
- `gloss_vocab` (other than `synthsign`): an existing file;
- the dataset of a translation DataModule (`label_dir` with the label file of every split the
  command reads, `pose_dir`), of CSL-News (`label_file`, `pose_dir`), of the production one
  (`pt_dir` with the four PT files per split), or a local `stream_dir` with its
  `signlab_stream.json`. SynthSign folders are generated on first use, so they are not checked.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache

from datamodules.csl_news import CSLNewsDataModule
from datamodules.formats import pt_split_paths
from datamodules.hub import SCHEME, is_hub_id, parse_hub_reference
from datamodules.production import GlossToPoseDataModule
from datamodules.streaming import META
from datamodules.translation import SignTranslationDataModule, label_path
from lightning_modules.config_errors import ConfigError, import_class

CHECKPOINT_KEYS = ("vqvae_ckpt", "back_translator_ckpt")
RESUME_PATHS = ("last", "best", "last_good")  # --ckpt_path names the CLI resolves in the run folder


def _get(section: Any, key: str) -> Any:
    return getattr(section, key, None) if section is not None else None


def _missing_file(path: str | os.PathLike) -> str | None:
    """What is wrong with a file that must be read, or None."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        return "does not exist"
    if resolved.is_dir():
        return "is a folder, expected a file"
    if not os.access(resolved, os.R_OK):
        return "is not readable"
    return None


def _missing_folder(path: str | os.PathLike) -> str | None:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        return "does not exist"
    if not resolved.is_dir():
        return "is a file, expected a folder"
    return None


def _weights(key: str, spec: str) -> Iterator[str]:
    if spec.startswith(SCHEME):
        try:
            parse_hub_reference(spec)
        except ValueError as err:
            yield f"{key}: {err}"
        return
    if problem := _missing_file(spec):
        yield f"{key}: weights file {spec!r} {problem}"


def _pretrained(key: str, spec: str) -> Iterator[str]:
    """A local folder, or a Hub id (in the cache when offline: `config.json` is in every model)."""
    if Path(spec).expanduser().is_dir():
        return
    if not is_hub_id(spec):
        yield f"{key}: {spec!r} is neither an existing folder nor a Hugging Face Hub id"
    elif hf_constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(spec, "config.json"), str):
        yield (f"{key}: {spec!r} is not in the Hugging Face cache {hf_constants.HF_HUB_CACHE} and HF_HUB_OFFLINE=1 "
               f"forbids downloading it (`huggingface-cli download {spec}` where there is network)")


def _tokenizer(key: str, spec: str) -> Iterator[str]:
    """Built-in and Hub tokenizers are left to `load_tokenizer`; a local path must exist."""
    path = Path(spec).expanduser()
    if spec.startswith("synthsign-") or path.exists():
        return
    if path.suffix in (".json", ".text") or not is_hub_id(spec):
        yield f"{key}: tokenizer {spec!r} does not exist"


def _gloss_vocab(key: str, spec: str) -> Iterator[str]:
    if spec != "synthsign" and (problem := _missing_file(spec)):
        yield f"{key}: gloss vocabulary {spec!r} {problem}"


def _files(key: str, paths: list[Path]) -> Iterator[str]:
    for path in paths:
        if problem := _missing_file(path):
            yield f"{key}: {str(path)!r} {problem}"


def _folder(key: str, path: str) -> Iterator[str]:
    if problem := _missing_folder(path):
        yield f"{key}: {path!r} {problem}"


def _model_problems(model: Any, resuming: bool) -> Iterator[str]:
    args = _get(model, "init_args")
    prefix = "model.init_args."
    if (spec := _get(args, "init_from")) and not resuming:
        yield from _weights(prefix + "init_from", spec)
    for key in CHECKPOINT_KEYS:
        if spec := _get(args, key):
            yield from _weights(prefix + key, spec)
    if spec := _get(args, "mt5_pretrained"):
        yield from _pretrained(prefix + "mt5_pretrained", spec)
    if spec := _get(args, "tokenizer"):
        yield from _tokenizer(prefix + "tokenizer", spec)
    if spec := _get(args, "gloss_vocab"):
        yield from _gloss_vocab(prefix + "gloss_vocab", spec)


def _data_problems(data: Any, stage: str | None) -> Iterator[str]:
    args = _get(data, "init_args")
    cls = import_class(_get(data, "class_path") or "")
    prefix = "data.init_args."
    if spec := _get(args, "tokenizer"):
        yield from _tokenizer(prefix + "tokenizer", spec)
    if spec := _get(args, "gloss_vocab"):
        yield from _gloss_vocab(prefix + "gloss_vocab", spec)
    if cls is None:
        return
    if stream_dir := _get(args, "stream_dir"):  # streamed: the dataset's own files are not read
        if "://" not in stream_dir:
            yield from _files(prefix + "stream_dir", [Path(stream_dir) / META])
        return
    splits = cls.stage_splits(stage) if hasattr(cls, "stage_splits") else ()
    if issubclass(cls, CSLNewsDataModule):
        if not _get(args, "synthsign"):
            yield from _files(prefix + "label_file", [Path(_get(args, "label_file"))])
            yield from _folder(prefix + "pose_dir", _get(args, "pose_dir"))
    elif issubclass(cls, SignTranslationDataModule):
        label_dir, pose_dir = _get(args, "label_dir"), _get(args, "pose_dir")
        if _get(args, "dataset") != "synthsign" and label_dir and pose_dir:
            folder = list(_folder(prefix + "label_dir", label_dir))
            yield from folder or _files(prefix + "label_dir", [label_path(Path(label_dir), s) for s in splits])
            yield from _folder(prefix + "pose_dir", pose_dir)
    elif issubclass(cls, GlossToPoseDataModule):
        pt_dir = _get(args, "pt_dir")
        if _get(args, "dataset") != "synthsign" and pt_dir:
            folder = list(_folder(prefix + "pt_dir", pt_dir))
            yield from folder or _files(prefix + "pt_dir", [p for s in splits for p in pt_split_paths(pt_dir, s).values()])


def check_config(config: Any, stage: str | None) -> None:
    """Raise one ConfigError listing every missing or unreadable file the parsed ``config`` (of
    command ``stage``: fit, validate, test, predict) names; see the module docstring."""
    ckpt_path = _get(config, "ckpt_path")
    problems = list(_model_problems(_get(config, "model"), resuming=bool(ckpt_path)))
    problems += _data_problems(_get(config, "data"), stage)
    if ckpt_path and str(ckpt_path) not in RESUME_PATHS:
        problems += _weights("ckpt_path", str(ckpt_path))
    if problems:
        raise ConfigError(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in the config, found "
                          "before building anything:\n  " + "\n  ".join(problems))
