"""The README's "Reproducing the papers" commands, as written, on stand-ins for what cannot be
downloaded here: a small mT5 saved as `google/mt5-base` and the released checkpoints' layouts
(`ZechengLi19/Uni-Sign`, `fiskenai/Geo-Sign`) in a private, offline Hugging Face cache, and
SynthSign in CSL-Daily's (Uni-Sign) and PHOENIX-2014T's (GFSLT-VLP) layouts. Only the length of
the run is overridden: on CPU, one epoch of two steps of two clips of at most 32 frames."""
from __future__ import annotations

import gzip
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import MT5Config, MT5ForConditionalGeneration

from datamodules.synthetic import generate, spoken_sentences_for_tokenizer
from datamodules.tokenization import build_word_level_tokenizer
from tests.cli_runs import REPO, run_cli
from tests.hf_cache import cached_snapshot
from tests.released_layout import released_names

pytestmark = pytest.mark.slow
SHORT = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
         "--trainer.sync_batchnorm", "false", "--trainer.max_epochs", "1",
         "--trainer.accumulate_grad_batches", "1", "--data.init_args.num_workers", "0",
         "--data.init_args.batch_size", "2", "--data.init_args.max_len", "32",
         "--model.init_args.num_beams", "1", "--model.init_args.max_new_tokens", "4"]
TINY_MT5 = dict(d_model=48, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=24,
                tie_word_embeddings=False)


def _paper_model(config: str, mt5_dir: Path):
    from lightning_modules.geosign import GeoSignTranslator

    args = yaml.safe_load((REPO / "experiments" / f"{config}.yaml").read_text())["model"]["init_args"]
    args.update(mt5_pretrained=str(mt5_dir), tokenizer=str(mt5_dir), init_from=None)
    torch.manual_seed(1)
    return GeoSignTranslator(**args)


def _phoenix_layout(unisign: Path, out: Path) -> None:
    """SynthSign's Uni-Sign files as GFSLT-VLP labels (keys `<split>/<name>`, gloss strings, no
    video_path) with poses at `pose_format/<split>/<name>.pkl`."""
    for split in ("train", "dev", "test"):
        with gzip.open(unisign / f"labels.{split}", "rb") as f:
            labels = pickle.load(f)
        converted = {}
        for entry in labels.values():
            name = f"{split}/{Path(entry['video_path']).stem}"
            converted[name] = {"name": name, "gloss": " ".join(entry["gloss"]).upper(), "text": entry["text"]}
            (out / "pose_format" / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(unisign / "pose_format" / f"{Path(entry['video_path']).stem}.pkl",
                        out / "pose_format" / f"{name}.pkl")
        with gzip.open(out / f"labels.{split}", "wb") as f:
            pickle.dump(converted, f)


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("reproduce")  # stands for the repository's folder
    (root / "experiments").symlink_to(REPO / "experiments")
    synth = root / "synth"
    generate(synth, num_train=4, num_dev=2, num_test=2, num_glosses=40)
    shutil.copytree(synth / "unisign", root / "data" / "CSL_Daily")
    _phoenix_layout(synth / "unisign", root / "data" / "PHOENIX-2014T")

    cache = root / "hf" / "hub"
    mt5 = cached_snapshot(cache, "google/mt5-base")
    tokenizer = build_word_level_tokenizer(spoken_sentences_for_tokenizer("zh"), "zh")
    tokenizer.save_pretrained(mt5)
    config = MT5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id, **TINY_MT5)
    MT5ForConditionalGeneration(config).save_pretrained(mt5)

    stage1 = {"model": released_names(_paper_model("unisign_pose", mt5))}
    torch.save(stage1, cached_snapshot(cache, "ZechengLi19/Uni-Sign") / "csl_stage1_weight.pth")
    geosign = cached_snapshot(cache, "fiskenai/Geo-Sign")
    torch.save(stage1, geosign / "pretraining.pth")
    best = _paper_model("geosign_token", mt5)
    torch.save({"model": released_names(best)}, geosign / "best.pth")
    env = {"HF_HOME": str(root / "hf"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return root, env


def _run(args: list[str], standins) -> str:
    root, env = standins
    result = run_cli([*args, *SHORT], cwd=root, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.parametrize("config, released", [
    ("unisign_pose", "hf://ZechengLi19/Uni-Sign/csl_stage1_weight.pth"),
    ("geosign_token", "hf://fiskenai/Geo-Sign/pretraining.pth"),
])
def test_fine_tune_from_released_weights_then_evaluate(config, released, standins):
    out = _run(["fit", "--config", f"experiments/{config}.yaml"], standins)
    assert re.search(rf"unisign weights {re.escape(released)} \(.*\): \d+ tensors loaded", out), out[-3000:]
    run = standins[0] / yaml.safe_load((REPO / "experiments" / f"{config}.yaml").read_text())["trainer"]["default_root_dir"]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    if config == "geosign_token":  # evaluating a run: the same command for every config
        out = _run(["test", "--config", f"experiments/{config}.yaml", "--ckpt_path", "best"], standins)
        assert "test/test/bleu4" in out and "tensors loaded" not in out  # the run's weights, not init_from's


def test_evaluate_the_released_geosign_model(standins):
    out = _run(["test", "--config", "experiments/geosign_token.yaml",
                "--model.init_args.init_from", "hf://fiskenai/Geo-Sign/best.pth"], standins)
    assert re.search(r"geosign weights hf://fiskenai/Geo-Sign/best\.pth \(.*\): \d+ tensors loaded", out), out[-3000:]
    assert "test/test/bleu4" in out


def test_phoenix_run_starts_from_a_csl_daily_run(standins):
    if not (standins[0] / "runs/geosign_token/checkpoints/last.ckpt").is_file():
        _run(["fit", "--config", "experiments/geosign_token.yaml"], standins)
    out = _run(["fit", "--config", "experiments/phoenix2014t/geosign_token.yaml",
                "--model.init_args.init_from", "runs/geosign_token/checkpoints/last.ckpt"], standins)
    assert re.search(r"signlab weights runs/geosign_token/checkpoints/last\.ckpt: \d+ tensors loaded", out), out[-3000:]
    assert (standins[0] / "runs/phoenix2014t_geosign_token/checkpoints/last.ckpt").is_file()
