"""Every experiment YAML parses (litgpt's config-hub test), and the paper configs build."""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_modules.cli import SignLabCLI
from tests.cli_runs import REPO
from tests.geosign_models import MT5_BASE

EXPERIMENTS = sorted((REPO / "experiments").rglob("*.yaml"))
PAPER_GEOSIGN = [p for p in EXPERIMENTS if p.parent.name != "demo" and p.stem in ("geosign_token", "geosign_pooled", "unisign_pose")]
RELEASED_UNISIGN_POSE = 587_747_368  # Uni-Sign pose-only, built from the release (../shared/data/released)


def _id(path: Path) -> str:
    return str(path.relative_to(REPO / "experiments"))


# strategies/ and loggers/ are overlays over an experiment (tests/test_loggers.py runs the latter)
@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p.parent.name not in ("strategies", "loggers")], ids=_id)
def test_config_parses(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        SignLabCLI(args=["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(out.getvalue())
    assert resolved["model"]["class_path"].startswith("lightning_modules.")
    assert resolved["checkpoint"]["save_last"] is True
    assert resolved["trainer"]["default_root_dir"].startswith("runs/")
    assert "${" not in out.getvalue()  # every interpolation resolved


def test_demo_geosign_configs_differ_only_in_the_hyperbolic_branch():
    configs = {name: yaml.safe_load((REPO / "experiments/demo" / f"{name}.yaml").read_text())
               for name in ("geosign_token", "geosign_pooled", "unisign_pose")}
    for name, cfg in configs.items():
        assert cfg["model"]["init_args"].pop("hyperbolic") == {"geosign_token": "token", "geosign_pooled": "pooled",
                                                              "unisign_pose": None}[name]
        cfg["trainer"].pop("default_root_dir"), cfg["trainer"]["logger"]["init_args"].pop("name")
    assert configs["geosign_token"] == configs["geosign_pooled"] == configs["unisign_pose"]


@pytest.mark.parametrize("path", PAPER_GEOSIGN, ids=_id)
def test_paper_geosign_config_builds(path):
    """The paper model, built on the meta device (no memory) from an mT5-base config."""
    from lightning_modules.geosign import GeoSignTranslator

    args = yaml.safe_load(path.read_text())["model"]["init_args"]
    assert args["mt5_pretrained"] == args["tokenizer"] == "google/mt5-base"
    assert args["init_from"].startswith("hf://")  # the papers fine-tune released pretraining
    args.update(mt5_pretrained=None, mt5_config=MT5_BASE, tokenizer="synthsign-zh", init_from=None)
    with torch.device("meta"):
        model = GeoSignTranslator(**args)
    assert model.lm.d_model == 768
    hyp = sum(p.numel() for p in model.hyperbolic_parameters())
    # Everything but the branch is the released Uni-Sign pose model (587,747,368 parameters, the
    # paper's 587.75M). The branch: four part projections 256 -> 256 and a text projection
    # 768 -> 256 with their log-scales, curvature, τ, margin and the α logit (pooled); the token
    # method adds M_key, b_key and τ_attn (the release: the same less τ_attn, 525,833).
    assert sum(p.numel() for p in model.parameters()) - hyp == RELEASED_UNISIGN_POSE
    assert hyp == {None: 0, "pooled": 460_041, "token": 525_834}[args["hyperbolic"]]
