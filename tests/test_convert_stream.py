"""`lightning convert_stream`: a config's translation dataset as litdata chunks, the config read as
`lightning fit` reads it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

pytest.importorskip("litdata", reason="the `stream` extra (litdata) is not installed")

from datamodules.streaming import META  # noqa: E402
from lightning_modules import convert_stream  # noqa: E402
from lightning_modules.config_errors import ConfigError  # noqa: E402
from tests.datamodules.csl_daily import write_csl  # noqa: E402


def _config(tmp_path, data: dict) -> str:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"model": {"class_path": "tests.cli_fixtures.tiny.TinyRegressor"}, "data": data}))
    return str(path)


def test_converts_the_resolved_config_with_its_overrides_and_ignores_stream_args(tmp_path, capsys):
    label_dir, pose_dir, tok = write_csl(tmp_path, {"train": [3, 4, 5], "dev": [3], "test": [4, 2]},
                                         np.random.default_rng(0))
    config = _config(tmp_path, {"class_path": "datamodules.streaming.StreamingTranslationDataModule", "init_args": {
        "dataset": "csl_daily", "label_dir": str(label_dir), "pose_dir": "elsewhere", "tokenizer": tok,
        "stream_dir": str(tmp_path / "not_yet")}})
    out = tmp_path / "chunks"
    code = convert_stream.main(["--config", config, "--data.init_args.pose_dir", str(pose_dir), "--out", str(out),
                                "--workers", "1", "--splits", "train", "dev"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"train": 3, "dev": 1}
    meta = json.loads((out / META).read_text())
    assert meta["identity"]["pose_dir"] == str(pose_dir) and meta["splits"] == {"train": 3, "dev": 1}


def test_a_production_config_is_refused_naming_its_class(tmp_path):
    config = _config(tmp_path, {"class_path": "datamodules.production.GlossToPoseDataModule"})
    with pytest.raises(ConfigError, match="GlossToPoseDataModule, not a translation DataModule"):
        convert_stream.main(["--config", config, "--out", str(tmp_path / "chunks")])
