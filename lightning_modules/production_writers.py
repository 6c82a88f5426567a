"""What ``lightning predict`` of a production model writes into its predictions folder.

Formats (``predict_formats``):

- ``"skels"``: Progressive Transformers' text files ``predict.{skels,gloss,text,files}``, one
  sample per line in the data's order, which ``datamodules.formats.read_pt_split`` reads back and
  ``python -m generation.render`` draws;
- ``"pose"``: one pose-format file per sample, ``pose/<name>.pose`` (a name such as
  ``dev/sample`` makes a subfolder), written by ``datamodules.pose_format_io.write_pose_format``
  for pose-format's tools and sign.mt. Needs the ``pose-format`` package.

The default is both when pose-format is installed, else ``.skels`` alone; asking for ``"pose"``
without the package fails when the model is built, not after generating.

Under DDP each rank generates its shard; ``PredictionWriter.write`` gathers them (a collective
call) into the data's order and global rank 0 writes.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path, PurePosixPath

import numpy as np
import torch.distributed as dist
from torch import Tensor

from datamodules.formats import write_skels

PREDICT_FORMATS = ("skels", "pose")
POSE_FORMAT_HINT = "pip install 'signlab[pose-format]' (or pip install pose-format)"


def pose_format_installed() -> bool:
    return importlib.util.find_spec("pose_format") is not None


def predict_formats(formats: list[str] | None) -> list[str]:
    """The formats to write: ``formats`` checked, or the default (module docstring) for None."""
    if formats is None:
        return ["skels", "pose"] if pose_format_installed() else ["skels"]
    unknown = [f for f in formats if f not in PREDICT_FORMATS]
    if unknown or not formats:
        raise ValueError(f"predict_formats must be a non-empty list of {PREDICT_FORMATS}, got {formats!r}")
    if "pose" in formats and not pose_format_installed():
        raise ImportError(f"predict_formats asks for 'pose' but the pose-format package is not installed: "
                          f"{POSE_FORMAT_HINT}, or leave 'pose' out")
    return list(dict.fromkeys(formats))


def write_pt_files(prefix: Path, items: list[dict]) -> None:
    """``prefix.{skels,gloss,text,files}`` from dicts with ``name``, ``gloss`` (str), ``text``, ``poses`` (T, 50, 3)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_skels(prefix.with_suffix(".skels"), [np.asarray(it["poses"]) for it in items])
    for key, suffix in (("gloss", ".gloss"), ("text", ".text"), ("name", ".files")):
        lines = [str(it[key]).replace("\n", " ") for it in items]  # one sample per line, always
        prefix.with_suffix(suffix).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def pose_file(folder: Path, name: str) -> Path:
    """``folder/<name>.pose``; a name that would leave ``folder`` (absolute, ``..``) is a ValueError."""
    parts = PurePosixPath(name).parts
    if not parts or parts[0] == "/" or ".." in parts:
        raise ValueError(f"sample name {name!r} cannot name a file inside {folder}")
    return folder.joinpath(*parts[:-1], parts[-1] + ".pose")


def write_pose_files(folder: Path, items: list[dict], fps: float) -> None:
    """One ``.pose`` per item (``name``, ``poses`` (T, 50, 3)) under ``folder``."""
    from datamodules.pose_format_io import write_pose_format

    for it in items:
        write_pose_format(pose_file(folder, it["name"]), it["poses"], fps)


class PredictionWriter:
    """Collects generated sequences batch by batch and writes them in the configured formats."""

    def __init__(self, formats: list[str] | None = None, fps: float = 25.0):
        self.formats = predict_formats(formats)
        if not fps > 0:
            raise ValueError(f"predict_fps must be > 0, got {fps}")
        self.fps = fps
        self.items: list[dict] = []

    def reset(self) -> None:
        self.items = []

    def add(self, names: list[str], glosses: list[list[str]], texts: list[str], poses: Tensor,
            frame_mask: Tensor) -> None:
        """A batch of generated poses (B, T, 50, 3) with their prefix frame mask (B, T)."""
        for i, name in enumerate(names):
            self.items.append({"name": name, "gloss": " ".join(glosses[i]), "text": texts[i],
                               "poses": poses[i][frame_mask[i]].float().cpu().numpy()})  # (T_i, 50, 3)

    def write(self, out_dir: Path) -> list[Path] | None:
        """Write every rank's items (call on every rank); the paths written on global rank 0, else None."""
        items = self.items
        if dist.is_available() and dist.is_initialized():
            # ShardSampler gives rank r the samples r, r + W, ...: interleave to restore the data's order
            shards: list = [None] * dist.get_world_size()
            dist.all_gather_object(shards, items)
            items = [shard[i] for i in range(max(map(len, shards))) for shard in shards if i < len(shard)]
            if dist.get_rank() != 0:
                return None
        written = []
        if "skels" in self.formats:
            write_pt_files(out_dir / "predict", items)
            written.append(out_dir / "predict.skels")
        if "pose" in self.formats:
            write_pose_files(out_dir / "pose", items, self.fps)
            written.append(out_dir / "pose")
        return written
