"""Prediction writers: which formats, where each .pose goes, and the errors before any generation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules import production_writers
from lightning_modules.production_writers import PredictionWriter, pose_file, predict_formats


def test_default_formats_follow_whether_pose_format_is_installed(monkeypatch):
    monkeypatch.setattr(production_writers, "pose_format_installed", lambda: True)
    assert predict_formats(None) == ["skels", "pose"]
    monkeypatch.setattr(production_writers, "pose_format_installed", lambda: False)
    assert predict_formats(None) == ["skels"]
    assert predict_formats(["skels", "skels"]) == ["skels"]


def test_asking_for_pose_without_pose_format_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(production_writers, "pose_format_installed", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'signlab\[pose-format\]'"):
        PredictionWriter(["skels", "pose"])
    for bad in (["gif"], []):
        with pytest.raises(ValueError, match="predict_formats"):
            predict_formats(bad)


def test_pose_files_mirror_the_sample_names_and_never_leave_the_folder(tmp_path):
    assert pose_file(tmp_path, "dev/01April_2010-6") == tmp_path / "dev" / "01April_2010-6.pose"
    assert pose_file(tmp_path, "s1") == tmp_path / "s1.pose"
    for name in ("../escape", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(ValueError, match="cannot name a file"):
            pose_file(tmp_path, name)


def test_writer_keeps_each_sequence_to_its_frames_and_writes_the_asked_formats(tmp_path):
    pytest.importorskip("pose_format", reason="the `pose-format` extra is not installed")
    from pose_format import Pose

    writer = PredictionWriter(["pose"], fps=10.0)
    poses = torch.rand(2, 5, 50, 3)
    mask = torch.arange(5)[None] < torch.tensor([[3], [5]])
    writer.add(["dev/x", "dev/y"], [["A", "B"], ["C"]], ["a b", "c"], poses, mask)
    assert writer.write(tmp_path) == [tmp_path / "pose"]
    assert not Path(tmp_path / "predict.skels").exists()
    read = Pose.read((tmp_path / "pose" / "dev" / "x.pose").read_bytes())
    assert read.body.data.shape == (3, 1, 50, 3) and read.body.fps == 10.0
    writer.reset()
    assert writer.items == []
