"""`lightning validate_data`: what a config's dataset folder holds, from the config as `fit` reads it."""
from __future__ import annotations

import gzip
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from datamodules.formats import write_skels
from lightning_modules import validate_data
from tests.cli_runs import REPO, run_cli
from tests.datamodules.csl_daily import write_csl

SHARED_LABELS = REPO.parent / "shared" / "data" / "labels"


def _config(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"model": {"class_path": "tests.cli_fixtures.tiny.TinyRegressor"}, "data": data}))
    return str(path)


def _translation(tmp_path: Path, csl, **more) -> str:
    label_dir, pose_dir, tok = csl
    return _config(tmp_path, {"class_path": "datamodules.translation.SignTranslationDataModule", "init_args": {
        "dataset": "csl_daily", "label_dir": str(label_dir), "pose_dir": str(pose_dir), "tokenizer": tok, **more}})


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = validate_data.main(args)
    return code, capsys.readouterr().out


def _row(out: str, split: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [split])


@pytest.fixture
def damaged(tmp_path):
    """A CSL-Daily-layout corpus with one missing and one corrupt train pose file, one dev label
    without text, and no test label file."""
    csl = write_csl(tmp_path, {"train": [4, 5, 6, 7], "dev": [3, 3]}, np.random.default_rng(0))
    label_dir, pose_dir, _ = csl
    (pose_dir / "Strain001_P0000_T00.pkl").unlink()
    (pose_dir / "Strain002_P0000_T00.pkl").write_bytes(b"\x80\x04garbage")
    dev = pickle.loads(gzip.decompress((label_dir / "labels.dev").read_bytes()))
    dev["Sdev001_P0000_T00"]["text"] = "  "
    (label_dir / "labels.dev").write_bytes(gzip.compress(pickle.dumps(dev)))
    return csl


def test_report_counts_samples_missing_malformed_and_lists_every_problem(tmp_path, damaged, capsys):
    config = _translation(tmp_path, damaged)
    listing = tmp_path / "problems.tsv"
    code, out = _run(["--config", config, "--list", str(listing)], capsys)
    assert code == 1
    # split, samples, malformed, present, missing, unreadable
    assert _row(out, "train") == ["train", "4", "0", "3", "1", "not", "read"]
    assert _row(out, "dev") == ["dev", "2", "1", "1", "0", "not", "read"]
    assert _row(out, "test")[:5] == ["test", "0", "0", "0", "0"]
    assert "train: 1 missing pose file: Strain001_P0000_T00" in out
    assert "dev: 1 malformed label: Sdev001_P0000_T00" in out
    assert f"test: 1 no label file: {damaged[0] / 'labels.test'}" in out
    rows = [line.split("\t") for line in listing.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == ["split", "name", "problem", "message"]
    assert {(r[0], r[1], r[2]) for r in rows[1:]} == {
        ("train", "Strain001_P0000_T00", "missing pose file"), ("dev", "Sdev001_P0000_T00", "malformed label"),
        ("test", str(damaged[0] / "labels.test"), "no label file")}
    assert "has an empty 'text'" in next(r[3] for r in rows if r[1] == "Sdev001_P0000_T00")

    code, out = _run(["--config", config, "--read_poses"], capsys)  # the corrupt pickle found by reading it
    assert code == 1 and _row(out, "train") == ["train", "4", "0", "3", "1", "1"]
    assert "train: 1 unreadable pose file (invalid): Strain002_P0000_T00" in out


def test_a_fresh_packed_cache_reports_unreadable_files_without_reading_them(tmp_path, damaged, capsys):
    from datamodules.translation import SignTranslationDataModule

    label_dir, pose_dir, tok = damaged
    SignTranslationDataModule(dataset="csl_daily", label_dir=str(label_dir), pose_dir=str(pose_dir), tokenizer=tok,
                              cache_dir=str(tmp_path / "cache"), on_bad_sample="skip").prepare_data()
    code, out = _run(["--config", _translation(tmp_path, damaged, cache_dir=str(tmp_path / "cache"))], capsys)
    assert code == 1 and _row(out, "train") == ["train", "4", "0", "3", "1", "1", "(packed", "cache)"]
    assert "train: 1 unreadable pose file (invalid): Strain002_P0000_T00" in out


def test_a_complete_dataset_exits_0_and_command_line_overrides_apply(tmp_path, capsys):
    csl = write_csl(tmp_path, {"train": [3] * 5, "dev": [3], "test": [4, 5]}, np.random.default_rng(1))
    elsewhere = tmp_path / "moved_poses"
    csl[1].rename(elsewhere)
    config = _translation(tmp_path, csl)
    code, out = _run(["--config", config], capsys)
    assert code == 1 and _row(out, "train")[3:5] == ["0", "5"]  # every pose missing at the config's path
    code, out = _run(["--config", config, "--data.init_args.pose_dir", str(elsewhere)], capsys)
    assert code == 0, out
    assert _row(out, "train")[:5] == ["train", "5", "0", "5", "0"] and _row(out, "test")[:5] == ["test", "2", "0", "2", "0"]
    assert out.splitlines()[-1].startswith("complete (")


def test_pt_folder_files_line_counts_and_malformed_lines(tmp_path, capsys):
    pt = tmp_path / "pt"
    pt.mkdir()
    poses = [np.zeros((3, 50, 3), np.float32), np.zeros((2, 50, 3), np.float32)]
    for split in ("train", "dev", "test"):
        write_skels(pt / f"{split}.skels", poses)
        (pt / f"{split}.gloss").write_text("A B\nC\n", encoding="utf-8")
        (pt / f"{split}.text").write_text("a b\nc\n", encoding="utf-8")
        (pt / f"{split}.files").write_text(f"{split}/x\n{split}/y\n", encoding="utf-8")
    lines = (pt / "train.skels").read_text().splitlines()
    (pt / "train.skels").write_text(lines[0] + "\n" + lines[1] + " 7\n")  # 301 values: not a multiple of 151
    (pt / "dev.text").unlink()
    (pt / "test.files").write_text("test/x\n", encoding="utf-8")
    config = _config(tmp_path, {"class_path": "datamodules.production.GlossToPoseDataModule", "init_args": {
        "dataset": "phoenix2014t", "pt_dir": str(pt), "gloss_vocab": str(pt / "train.gloss")}})
    code, out = _run(["--config", config, "--read_poses"], capsys)
    assert code == 1
    assert _row(out, "train") == ["train", "2", "1"]
    assert f"dev: 1 no PT file: {pt / 'dev.text'}" in out
    assert "test: 1 line counts disagree" in out
    assert "train: 1 malformed sample: train/y" in out


def test_real_csl_daily_labels_are_reported_in_seconds(tmp_path, capsys):
    """The CSL-Daily label files as Uni-Sign distributes them (20,654 samples), without poses."""
    labels = SHARED_LABELS / "csl_daily"
    if not labels.is_dir():
        pytest.skip(f"reference labels not present at {labels}")
    (tmp_path / "poses").mkdir()
    config = _config(tmp_path, {"class_path": "datamodules.translation.SignTranslationDataModule", "init_args": {
        "dataset": "csl_daily", "label_dir": str(labels), "pose_dir": str(tmp_path / "poses"),
        "tokenizer": "synthsign-zh"}})
    start = time.perf_counter()
    code, out = _run(["--config", config, "--list", str(tmp_path / "all.tsv")], capsys)
    elapsed = time.perf_counter() - start
    assert code == 1
    assert [_row(out, s)[:5] for s in ("train", "dev", "test")] == [
        ["train", "18401", "0", "0", "18401"], ["dev", "1077", "0", "0", "1077"], ["test", "1176", "0", "0", "1176"]]
    assert len(out.splitlines()) < 12  # a summary, not 20,654 lines
    assert len((tmp_path / "all.tsv").read_text(encoding="utf-8").splitlines()) == 1 + 20654
    assert elapsed < 60, elapsed


@pytest.mark.slow
def test_the_lightning_command_exits_1_on_problems_and_2_on_a_config_error(tmp_path, damaged):
    proc = run_cli(["validate_data", "--config", _translation(tmp_path, damaged)], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "train: 1 missing pose file: Strain001_P0000_T00" in proc.stdout
    proc = run_cli(["validate_data", "--config", _translation(tmp_path, damaged, dataset="csl_weekly")], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "lightning: data (SignTranslationDataModule): dataset must be one of ('csl_daily', 'phoenix2014t', "
        "'synthsign'), got 'csl_weekly'")


def test_csl_news_is_read_from_its_json_as_training_splits_it(tmp_path, capsys):
    """Before any fit has written its split label files: 200 entries, 198 train and 2 dev (= test)."""
    import json

    from tests.datamodules.csl_daily import make_pose

    poses = tmp_path / "pose_format"
    poses.mkdir()
    rng = np.random.default_rng(0)
    entries = [{"video": f"v{i:03d}.mp4", "pose": f"v{i:03d}.pkl", "text": "你们好" if i != 5 else ""} for i in range(200)]
    for entry in entries[:150]:
        (poses / entry["pose"]).write_bytes(pickle.dumps(make_pose(3, rng)))
    (tmp_path / "CSL_News_Labels.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    config = _config(tmp_path, {"class_path": "datamodules.csl_news.CSLNewsDataModule", "init_args": {
        "label_file": str(tmp_path / "CSL_News_Labels.json"), "pose_dir": str(poses), "tokenizer": "synthsign-zh"}})
    code, out = _run(["--config", config], capsys)
    assert code == 1
    assert _row(out, "train")[:5] == ["train", "198", "1", "149", "48"]
    assert _row(out, "dev")[:5] == ["dev", "2", "0", "0", "2"] and _row(out, "test")[:5] == ["test", "2", "0", "0", "2"]
    assert "train: 1 malformed label: v005.mp4" in out
    assert not (tmp_path / "signlab_splits").exists()  # nothing written
