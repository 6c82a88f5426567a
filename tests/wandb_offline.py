"""Read back what an offline W&B run recorded, so tests can check dashboards without a server.

wandb >= 0.20 writes records from its Go core and ships no Python reader, so this parses the
`.wandb` file directly: a 7-byte header (":W&B", magic 0xBEE1, version), then LevelDB-log blocks
of 32 KiB holding 7-byte-framed chunks (crc32, length, type FULL/FIRST/MIDDLE/LAST) of
protobuf `Record`s.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_BLOCK = 32768
_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path):
    data = path.read_bytes()
    ident, magic, _version = _HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = _HEADER.size, b""
    while pos + _CHUNK.size <= len(data):
        if _BLOCK - pos % _BLOCK < _CHUNK.size:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = _CHUNK.unpack_from(data, pos)
        pos += _CHUNK.size
        chunk = data[pos:pos + length]
        pos += length
        if kind == 0:  # zero padding written at the end of a flushed block
            continue
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def read_offline_run(run_dir: str | Path) -> tuple[dict, dict[str, list]]:
    """(config, history) of an offline run folder: config key -> value, metric -> logged values
    (media such as images and tables as dicts with their `_type`, `path`, …)."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb in {run_dir}")
    config: dict = {}
    history: dict[str, list] = {}
    for record in _records(files[0]):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        for item in updates:
            config[item.key] = json.loads(item.value_json)
        if kind == "history":
            media: dict[str, dict] = {}  # images and tables arrive as nested keys (key, field)
            for item in record.history.item:
                key, *field = [item.key] if item.key else list(item.nested_key)
                if field:
                    media.setdefault(key, {})["/".join(field)] = json.loads(item.value_json)
                else:
                    history.setdefault(key, []).append(json.loads(item.value_json))
            for key, value in media.items():
                history.setdefault(key, []).append(value)
    return config, history


def run_exited(run_dir: str | Path) -> bool:
    """Whether the offline run's file holds its exit record: written only when the run finished."""
    files = sorted(Path(run_dir).glob("run-*.wandb"))
    return bool(files) and any(record.WhichOneof("record_type") == "exit" for record in _records(files[0]))


def offline_runs(save_dir: str | Path) -> list[Path]:
    """Offline run folders under a WandbLogger save_dir, oldest first."""
    return sorted(Path(save_dir).glob("wandb/offline-run-*"))
