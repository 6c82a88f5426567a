"""Check before you spend: missing files are found before anything is built, and a wrong config
value is one short message naming the key and what it accepts."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

from lightning_modules import cli
from lightning_modules.config_errors import ConfigError
from lightning_modules.preflight import check_config
from tests.cli_runs import REPO, run_cli
from tests.hf_cache import cached_snapshot

TINY = str(REPO / "tests" / "cli_fixtures" / "tiny.yaml")


def _section(class_path: str, **init_args) -> Namespace:
    return Namespace(class_path=class_path, init_args=Namespace(**init_args))


def _config(model: Namespace | None = None, data: Namespace | None = None, ckpt_path: str | None = None) -> Namespace:
    return Namespace(model=model or _section("tests.cli_fixtures.tiny.TinyRegressor", dim=8),
                     data=data or _section("tests.cli_fixtures.tiny.TinyData", dim=8), ckpt_path=ckpt_path)


def _problems(config: Namespace, stage: str = "fit") -> list[str]:
    with pytest.raises(ConfigError) as err:
        check_config(config, stage)
    lines = str(err.value).splitlines()
    assert lines[0].endswith("found before building anything:")
    return [line.strip() for line in lines[1:]]


def _translation(**init_args) -> Namespace:
    return _section("datamodules.translation.SignTranslationDataModule",
                    **{"dataset": "csl_daily", "tokenizer": "synthsign-zh", **init_args})


def test_translation_dataset_folders_and_the_stages_label_files(tmp_path):
    labels, poses = tmp_path / "labels", tmp_path / "poses"
    assert _problems(_config(data=_translation(label_dir=str(labels), pose_dir=str(poses)))) == [
        f"data.init_args.label_dir: {str(labels)!r} does not exist",
        f"data.init_args.pose_dir: {str(poses)!r} does not exist"]
    labels.mkdir()
    poses.write_text("a file")
    (labels / "labels.train").write_bytes(b"")
    data = _translation(label_dir=str(labels), pose_dir=str(poses))
    assert _problems(_config(data=data), "fit") == [
        f"data.init_args.label_dir: {str(labels / 'labels.dev')!r} does not exist",
        f"data.init_args.pose_dir: {str(poses)!r} is a file, expected a folder"]
    poses.unlink()
    poses.mkdir()
    # `test` evaluates dev and test for translation; train is not needed there
    assert _problems(_config(data=data), "test") == [
        f"data.init_args.label_dir: {str(labels / name)!r} does not exist" for name in ("labels.dev", "labels.test")]
    for split in ("dev", "test"):
        (labels / f"labels.{split}").write_bytes(b"")
    check_config(_config(data=data), "fit")
    check_config(_config(data=_section("datamodules.translation.SignTranslationDataModule", dataset="synthsign",
                                       data_dir=str(tmp_path / "generated_later"))), "fit")


def test_production_pt_files_per_split(tmp_path):
    pt = tmp_path / "pt"
    pt.mkdir()
    for suffix in ("skels", "gloss", "text", "files"):
        (pt / f"test.{suffix}").write_text("")
    (pt / "test.text").unlink()
    data = _section("datamodules.production.GlossToPoseDataModule", dataset="phoenix2014t", pt_dir=str(pt),
                    gloss_vocab=str(pt / "train.gloss"))
    assert _problems(_config(data=data), "predict") == [
        f"data.init_args.gloss_vocab: gloss vocabulary {str(pt / 'train.gloss')!r} does not exist",
        f"data.init_args.pt_dir: {str(pt / 'test.text')!r} does not exist"]


def test_streamed_data_needs_its_chunks_not_the_dataset(tmp_path):
    data = _section("datamodules.streaming.StreamingTranslationDataModule", dataset="csl_daily",
                    label_dir=str(tmp_path / "gone"), pose_dir=str(tmp_path / "gone"), stream_dir=str(tmp_path),
                    tokenizer="synthsign-zh")
    assert _problems(_config(data=data)) == [
        f"data.init_args.stream_dir: {str(tmp_path / 'signlab_stream.json')!r} does not exist"]
    data.init_args.stream_dir = "s3://bucket/chunks"  # an object store is asked when the data is set up
    check_config(_config(data=data), "fit")


def test_weights_files_and_tokenizer_paths(tmp_path):
    (tmp_path / "folder.ckpt").mkdir()
    model = _section("lightning_modules.posevq_diffusion.PoseVQDiffusion", vqvae_ckpt=str(tmp_path / "vq.ckpt"),
                     back_translator_ckpt=str(tmp_path / "folder.ckpt"), gloss_vocab="synthsign")
    assert _problems(_config(model=model)) == [
        f"model.init_args.vqvae_ckpt: weights file {str(tmp_path / 'vq.ckpt')!r} does not exist",
        f"model.init_args.back_translator_ckpt: weights file {str(tmp_path / 'folder.ckpt')!r} is a folder, "
        "expected a file"]
    model = _section("lightning_modules.geosign.GeoSignTranslator", init_from="hf://owner/repo",
                     tokenizer=str(tmp_path / "tokenizer.json"), mt5_pretrained="./mt5")
    problems = _problems(_config(model=model))
    assert problems[0].startswith("model.init_args.init_from: malformed Hugging Face Hub reference 'hf://owner/repo'")
    assert problems[1:] == ["model.init_args.mt5_pretrained: './mt5' is neither an existing folder nor a Hugging "
                            "Face Hub id", f"model.init_args.tokenizer: tokenizer {str(tmp_path / 'tokenizer.json')!r} "
                            "does not exist"]
    # resuming: the checkpoint's weights win over init_from, which is not read; an explicit file must exist
    model = _section("lightning_modules.geosign.GeoSignTranslator", init_from=str(tmp_path / "released.pth"),
                     tokenizer="synthsign-zh")
    assert _problems(_config(model=model, ckpt_path=str(tmp_path / "run.ckpt"))) == [
        f"ckpt_path: weights file {str(tmp_path / 'run.ckpt')!r} does not exist"]
    check_config(_config(model=model, ckpt_path="last"), "fit")


def test_an_mt5_hub_id_must_be_cached_when_offline(offline_cache, monkeypatch):
    model = _section("lightning_modules.geosign.GeoSignTranslator", mt5_pretrained="google/mt5-base",
                     tokenizer="google/mt5-base")
    problems = _problems(_config(model=model))
    assert problems == [f"model.init_args.mt5_pretrained: 'google/mt5-base' is not in the Hugging Face cache "
                        f"{offline_cache} and HF_HUB_OFFLINE=1 forbids downloading it (`huggingface-cli download "
                        "google/mt5-base` where there is network)"]
    (cached_snapshot(offline_cache, "google/mt5-base") / "config.json").write_text("{}")
    check_config(_config(model=model), "fit")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online: downloaded on first use
    check_config(_config(model=_section("lightning_modules.geosign.GeoSignTranslator", mt5_pretrained="google/mt5-small")),
                 "fit")


def _write(tmp_path: Path, **data_args) -> str:
    config = yaml.safe_load(Path(TINY).read_text())
    config["data"] = {"class_path": "datamodules.translation.SignTranslationDataModule",
                      "init_args": {"dataset": "csl_daily", "tokenizer": "synthsign-zh", **data_args}}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_the_cli_stops_before_building_the_model_or_a_logger_run(tmp_path, monkeypatch):
    from tests.cli_fixtures.tiny import TinyRegressor

    monkeypatch.chdir(tmp_path)
    def built(self, dim: int = 8, lr: float = 0.05) -> None:  # the signature the parser reads
        pytest.fail("the model was built")

    monkeypatch.setattr(TinyRegressor, "__init__", built)
    config = _write(tmp_path, label_dir=str(tmp_path / "labels"), pose_dir=str(tmp_path / "poses"))
    with pytest.raises(ConfigError, match=r"data\.init_args\.label_dir: '.*labels' does not exist"):
        cli.SignLabCLI(args=["fit", "--config", config])
    assert not (tmp_path / "runs").exists()  # no run folder, no W&B files


def _main(args: list[str], capsys, monkeypatch) -> list[str]:
    monkeypatch.setattr(cli, "show_signlab_logs", lambda: None)  # its handlers would outlive capsys
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2
    # the program name is sys.argv[0]'s: pytest's here, `lightning` from the console script
    prog = os.path.basename(sys.argv[0])
    return [line.replace(prog, "lightning") for line in capsys.readouterr().err.strip().splitlines()]


def test_an_unknown_option_names_the_key_the_closest_option_and_all_of_them(capsys, monkeypatch):
    lines = _main(["fit", "--config", TINY, "--model.init_args.dimm", "3"], capsys, monkeypatch)
    assert lines == ["lightning fit: config error: model.init_args.dimm: TinyRegressor has no option 'dimm' "
                     "(did you mean 'dim'?); its options: dim, lr",
                     "(lightning fit --help lists every option; JSONARGPARSE_DEBUG=true shows the parser's full report)"]


@pytest.mark.parametrize("args, message", [
    (["--model.init_args.dim", "banana"], "model.init_args.dim: expected int, got banana"),
    (["--trainer.max_epochs", "x"], "trainer.max_epochs: expected int, got x"),
    (["--trainer.precision", "17"], "trainer.precision: expected one of 64, 32, 16 or one of 'transformer-engine'"),
])
def test_a_value_of_the_wrong_type_names_the_key_and_the_type(capsys, monkeypatch, args, message):
    lines = _main(["fit", "--config", TINY, *args], capsys, monkeypatch)
    assert len(lines) == 2 and lines[0].startswith(f"lightning fit: config error: {message}"), lines


def test_a_value_the_class_refuses_is_one_line(tmp_path, capsys, monkeypatch):
    labels = tmp_path / "labels"
    labels.mkdir()
    for split in ("train", "dev"):
        (labels / f"labels.{split}").write_bytes(b"")
    config = _write(tmp_path, label_dir=str(labels), pose_dir=str(tmp_path), on_bad_sample="ignore")
    lines = _main(["fit", "--config", config], capsys, monkeypatch)
    assert lines[-1] == ("lightning: datamodules.translation.SignTranslationDataModule: on_bad_sample must be one "
                         "of ('raise', 'skip'), got 'ignore'")


@pytest.mark.slow
def test_the_console_script_prints_two_lines_and_exits_2(tmp_path):
    proc = run_cli(["fit", "--config", TINY, "--model.init_args.hyp_variant", "banana"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[0] == ("lightning fit: config error: model.init_args.hyp_variant: "
                                                   "TinyRegressor has no option 'hyp_variant'; its options: dim, lr")
    assert len(proc.stderr.strip().splitlines()) == 2
    proc = run_cli(["fit", "--config", _write(tmp_path, label_dir="missing", pose_dir="missing")], cwd=tmp_path)
    assert proc.returncode == 2
    assert "data.init_args.label_dir: 'missing' does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_weights_file_that_fails_to_load_is_named_with_its_error_type(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "vq.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    config = yaml.safe_load(Path(TINY).read_text())
    config["model"] = {"class_path": "lightning_modules.posevq_diffusion.PoseVQDiffusion",
                       "init_args": {"vqvae_ckpt": str(bad)}}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    lines = _main(["fit", "--config", str(path)], capsys, monkeypatch)
    assert "CheckpointError: " in lines[-1] and str(bad) in lines[-1], lines
