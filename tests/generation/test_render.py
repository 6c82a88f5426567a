"""Rendering: strip/animation files exist with the expected size and content, CLI on a .skels file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datamodules.keypoints import PT_LEFT_HAND, PT_NUM_JOINTS, PT_RIGHT_HAND
from generation import render


def waving_pose(num_frames: int = 12) -> np.ndarray:
    """A plausible PT sequence (T, 50, 3): fixed torso, wrists circling, fingers fanned out.

    PT units (neck at the origin, y grows downward, values within about +-0.5).
    """
    seq = np.zeros((num_frames, PT_NUM_JOINTS, 3))
    seq[:, 0] = (0.0, -0.2, 0.0)  # head above the neck
    seq[:, 2], seq[:, 3] = (-0.15, 0.0, 0.0), (-0.2, 0.2, 0.0)
    seq[:, 5], seq[:, 6] = (0.15, 0.0, 0.0), (0.2, 0.2, 0.0)
    phase = np.linspace(0, 2 * np.pi, num_frames, endpoint=False)
    circle = 0.06 * np.stack([np.cos(phase), np.sin(phase), np.zeros_like(phase)], -1)
    for wrist, elbow, hand in ((4, 3, PT_RIGHT_HAND), (7, 6, PT_LEFT_HAND)):
        seq[:, wrist] = seq[:, elbow] + np.array([0.0, -0.15, 0.0]) + circle
        seq[:, hand[0]] = seq[:, wrist]
        for finger in range(5):
            angle = np.pi * (0.3 + 0.1 * finger)
            direction = np.array([np.cos(angle), -np.sin(angle), 0.0])
            for k in range(4):
                seq[:, hand[1 + 4 * finger + k]] = seq[:, wrist] + 0.02 * (k + 1) * direction
    return seq


def test_front_view_puts_head_above_hands():
    view = render._front_view(waving_pose())
    assert (view[:, 0, 1] > view[:, 4, 1]).all() and (view[:, 0, 1] > view[:, 7, 1]).all()


def test_frame_indices_cover_both_ends():
    np.testing.assert_array_equal(render.frame_indices(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(render.frame_indices(1, 3), [0, 0, 0])
    with pytest.raises(ValueError, match="num_frames"):
        render.frame_indices(10, 0)


def test_strip_png_has_figure_size_and_ink(tmp_path):
    rows = {"GT": waving_pose(20), "rec": waving_pose(20) * 1.1, "gen": waving_pose(14)}
    fig = render.render_strip(rows, num_frames=5, title="REGEN MORGEN")
    assert len(fig.axes) == 15
    assert [ax.get_ylabel() for ax in fig.axes[::5]] == ["GT", "rec", "gen"]
    # each row samples its own length: the last panel of the 14-frame row shows t=13
    assert fig.axes[-1].get_title() == "t=13"
    width_in, height_in = fig.get_size_inches()

    path = render.save_strip(tmp_path / "sub" / "strip.png", rows, num_frames=5, title="REGEN MORGEN", dpi=50)
    image = np.asarray(Image.open(path).convert("L"))
    assert image.shape == (round(height_in * 50), round(width_in * 50))
    assert (image < 128).mean() > 0.001  # bones were drawn on the white background


def test_strip_draws_every_bone():
    fig = render.render_strip({"GT": waving_pose(4)}, num_frames=2)
    n_segments = sum(len(c.get_segments()) for c in fig.axes[0].collections)
    assert n_segments == 7 + 21 + 21  # body bones + (wrist->hand root + 20 finger bones) per hand


def test_figure_to_array_matches_figure_size():
    fig = render.render_strip({"GT": waving_pose(4)}, num_frames=3)
    pixels = render.figure_to_array(fig)
    width_in, height_in = fig.get_size_inches()
    assert pixels.shape == (round(height_in * fig.dpi), round(width_in * fig.dpi), 3)
    assert pixels.dtype == np.uint8 and pixels.min() < 100


def test_gif_has_one_frame_per_pose(tmp_path):
    path = render.animate(waving_pose(9), tmp_path / "clip.gif", fps=10, dpi=40)
    with Image.open(path) as gif:
        assert gif.n_frames == 9
        assert gif.size == (round(3 * render.PANEL_INCHES * 40),) * 2


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"rows\['gen'\].*\(T>0, 50, 3\)"):
        render.render_strip({"gen": np.zeros((5, 49, 3))})
    with pytest.raises(ValueError, match="rows is empty"):
        render.render_strip({})
    with pytest.raises(ValueError, match=r"clip\.avi.*\.gif or \.mp4"):
        render.animate(waving_pose(3), tmp_path / "clip.avi")


def test_mp4_needs_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"clip\.mp4: writing MP4 needs ffmpeg"):
        render.animate(waving_pose(3), tmp_path / "clip.mp4")


@pytest.mark.skipif(render.shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_mp4_written_when_ffmpeg_exists(tmp_path):
    path = render.animate(waving_pose(6), tmp_path / "clip.mp4", dpi=40)
    assert path.stat().st_size > 0


def test_cli_renders_a_synthsign_sequence(tmp_path, capsys):
    from datamodules.formats import read_skels
    from datamodules.synthetic import generate

    generate(tmp_path / "synthsign", num_train=1, num_dev=2, num_test=1, workers=1)
    skels = tmp_path / "synthsign" / "pt" / "dev.skels"
    length = len(read_skels(skels)[1])

    out = render.main([str(skels), "--index", "1", "--out", str(tmp_path / "out.gif"), "--fps", "25"])
    assert out == tmp_path / "out.gif" and str(out) in capsys.readouterr().out
    with Image.open(out) as gif:
        assert gif.n_frames == length

    png = render.main([str(skels), "--index", "0", "--out", str(tmp_path / "strip.png"), "--frames", "3"])
    width, height = Image.open(png).size
    assert width > 2 * height  # one row of three panels plus the gloss title
    gloss_line = (skels.with_suffix(".gloss")).read_text().splitlines()[0]
    assert render._gloss_title(skels, 0) == gloss_line

    with pytest.raises(SystemExit):
        render.main([str(skels), "--index", "2", "--out", str(tmp_path / "x.gif")])
    assert "out of range (file has 2 sequences)" in capsys.readouterr().err
