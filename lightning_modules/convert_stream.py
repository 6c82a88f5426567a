"""`lightning convert_stream --config CONFIG --out DIR`: a config's translation dataset as litdata
chunks (`datamodules.streaming.convert`; layout, resume and the fingerprint check are described
there). The config is resolved as `lightning fit` resolves it (`data_config`); its `stream_*`
arguments are ignored, since the conversion reads the dataset the chunks are made from.
"""
from __future__ import annotations

import argparse
import json
import os

from datamodules.streaming import BLOCK_SAMPLES, CHUNK_BYTES, convert
from datamodules.translation import SignTranslationDataModule
from lightning_modules.config_errors import ConfigError
from lightning_modules.data_config import datamodule_from_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning convert_stream", description="Convert a config's translation dataset into litdata chunks.",
        epilog="Every other argument (--config, --data.init_args.KEY VALUE, ...) is read as `lightning fit` reads it.")
    parser.add_argument("--out", required=True, help="output folder (rerun to resume a killed conversion)")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                        help="litdata.optimize worker processes")
    parser.add_argument("--chunk-bytes", default=CHUNK_BYTES)
    parser.add_argument("--splits", nargs="+", default=["train", "dev", "test"])
    parser.add_argument("--block-samples", type=int, default=BLOCK_SAMPLES,
                        help="samples per optimize call: what a killed conversion redoes at most")
    options, config_args = parser.parse_known_args(argv)
    if not config_args:
        parser.error("give the experiment's --config (and any overrides)")
    dm = datamodule_from_config(config_args, drop=("stream_dir", "stream_timeout", "stream_cache_dir"))
    if not isinstance(dm, SignTranslationDataModule):
        raise ConfigError(f"data is {type(dm).__name__}, not a translation DataModule: only those stream")
    meta = convert(dm, options.out, options.workers, options.chunk_bytes, tuple(options.splits), options.block_samples)
    print(json.dumps(meta["splits"]))
    return 0
