"""Draw PT 50-joint skeletons with matplotlib: frame strips (the paper's Figure 3), GIF/MP4 clips.

Coordinates: PT ``.skels`` joints come from OpenPose image coordinates lifted to 3D, so y grows
*downward* (PT's ``plot_videos.py`` draws them straight onto an image); we plot the front view
(x, -y) so the head appears above the hands. z (depth) is ignored. Axis limits are shared by all
panels of a figure so rows (ground truth / reconstruction / generated) are directly comparable.

Command line::

    python -m generation.render FILE.skels --index 3 --out out.gif   # or out.mp4 / out.png
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never open a display

import matplotlib.pyplot  # noqa: E402,F401  wandb.Image(fig) looks up matplotlib.pyplot
import numpy as np  # noqa: E402
from matplotlib.animation import FFMpegWriter, FuncAnimation, PillowWriter  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from datamodules.keypoints import (  # noqa: E402
    PT_BODY_BONES,
    PT_LEFT_HAND_BONES,
    PT_NUM_JOINTS,
    PT_RIGHT_HAND_BONES,
)

# (bones, colour) per part; "left" is the signer's left (joints 8-28, see keypoints.py).
PART_STYLE = (
    (PT_BODY_BONES, "0.25"),
    (PT_LEFT_HAND_BONES, "tab:blue"),
    (PT_RIGHT_HAND_BONES, "tab:red"),
)
PANEL_INCHES = 1.6  # side of one skeleton panel
MARGIN = 0.05  # fraction of the pose extent added around it
MIN_EXTENT = 1e-3  # keeps the limits valid for an all-zero (padding) sequence


def check_sequence(seq: np.ndarray, name: str = "sequence") -> np.ndarray:
    """Return ``seq`` as a float (T, 50, 3) numpy array, or raise naming ``name``."""
    arr = np.asarray(seq.detach().cpu() if hasattr(seq, "detach") else seq, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] != (PT_NUM_JOINTS, 3) or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected a (T>0, {PT_NUM_JOINTS}, 3) pose sequence, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: pose sequence contains NaN or inf")
    return arr


def _front_view(seq: np.ndarray) -> np.ndarray:
    """(T, 50, 3) PT joints -> (T, 50, 2) plot coordinates with y pointing up."""
    return np.stack([seq[..., 0], -seq[..., 1]], axis=-1)


def _segments(frame_2d: np.ndarray) -> list[np.ndarray]:
    """(50, 2) -> one (n_bones, 2, 2) segment array per part."""
    return [frame_2d[np.array(bones)] for bones, _ in PART_STYLE]


def _limits(views: list[np.ndarray]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Square, shared x/y limits covering every joint of every (T, 50, 2) view."""
    points = np.concatenate([v.reshape(-1, 2) for v in views])
    lo, hi = points.min(0), points.max(0)
    centre = (lo + hi) / 2
    half = max(float((hi - lo).max()) / 2, MIN_EXTENT) * (1 + MARGIN)
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def _setup_axes(ax, limits) -> list[LineCollection]:
    """Blank square axes with one (empty) LineCollection per part, to be filled by segments."""
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    collections = []
    for _, colour in PART_STYLE:
        lc = LineCollection([], colors=colour, linewidths=1.2, capstyle="round")
        ax.add_collection(lc)
        collections.append(lc)
    return collections


def _draw(collections: list[LineCollection], frame_2d: np.ndarray) -> None:
    for lc, segs in zip(collections, _segments(frame_2d)):
        lc.set_segments(segs)


def frame_indices(length: int, num_frames: int) -> np.ndarray:
    """``num_frames`` indices spread evenly over ``range(length)``, first and last included."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return np.linspace(0, length - 1, num_frames).round().astype(int)


def render_strip(rows: dict[str, np.ndarray], num_frames: int = 8, title: str | None = None) -> Figure:
    """A grid of skeletons: one row per ``rows`` entry (label -> (T, 50, 3)), ``num_frames`` columns.

    Each row samples the same relative positions (``frame_indices``) of its own length, so rows
    of different lengths (e.g. generated vs ground truth) stay aligned at start and end. The
    figure is not registered with pyplot: it is freed like any object, no ``plt.close`` needed.
    """
    if not rows:
        raise ValueError("render_strip: rows is empty; pass e.g. {'GT': poses}")
    views = {label: _front_view(check_sequence(seq, f"rows[{label!r}]")) for label, seq in rows.items()}
    limits = _limits(list(views.values()))
    fig = Figure(figsize=(PANEL_INCHES * num_frames, PANEL_INCHES * len(views) + (0.4 if title else 0)))
    axes = fig.subplots(len(views), num_frames, squeeze=False)
    for r, (label, view) in enumerate(views.items()):
        for c, t in enumerate(frame_indices(len(view), num_frames)):
            ax = axes[r, c]
            _draw(_setup_axes(ax, limits), view[t])
            ax.set_title(f"t={t}", fontsize=7, pad=2)
        axes[r, 0].set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_strip(path: str | Path, rows: dict[str, np.ndarray], num_frames: int = 8,
               title: str | None = None, dpi: int = 100) -> Path:
    """Render ``render_strip(rows, num_frames, title)`` to an image file (format from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = render_strip(rows, num_frames=num_frames, title=title)
    fig.savefig(path, dpi=dpi)
    return path


def figure_to_array(fig: Figure) -> np.ndarray:
    """Rasterise a figure to a (H, W, 3) uint8 array (for loggers that want pixels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def animate(seq: np.ndarray, path: str | Path, fps: int = 12, title: str | None = None,
            dpi: int = 100) -> Path:
    """Write a (T, 50, 3) sequence as a one-skeleton clip: ``.gif`` (Pillow) or ``.mp4`` (ffmpeg)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        writer = PillowWriter(fps=fps)
    elif suffix == ".mp4":
        if shutil.which("ffmpeg") is None:
            raise RuntimeError(f"{path}: writing MP4 needs ffmpeg on PATH; write a .gif instead")
        writer = FFMpegWriter(fps=fps)
    else:
        raise ValueError(f"{path}: animation format must be .gif or .mp4, got {suffix!r}")
    view = _front_view(check_sequence(seq, str(path)))
    path.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(3 * PANEL_INCHES, 3 * PANEL_INCHES))
    ax = fig.subplots()
    collections = _setup_axes(ax, _limits([view]))
    if title:
        ax.set_title(title, fontsize=9)
    counter = ax.text(0.02, 0.02, "", transform=ax.transAxes, fontsize=8)

    def update(t: int):
        _draw(collections, view[t])
        counter.set_text(f"{t + 1}/{len(view)}")
        return (*collections, counter)

    FuncAnimation(fig, update, frames=len(view), blit=False).save(str(path), writer=writer, dpi=dpi)
    return path


def _gloss_title(skels_path: Path, index: int) -> str | None:
    """Line ``index`` of the parallel PT ``.gloss`` file, when it exists."""
    gloss_path = skels_path.with_suffix(".gloss")
    if not gloss_path.is_file():
        return None
    lines = gloss_path.read_text(encoding="utf-8").splitlines()
    return lines[index].strip() if index < len(lines) else None


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m generation.render", description=__doc__.split("\n")[0])
    parser.add_argument("skels", type=Path, help="PT .skels file (one sequence per line)")
    parser.add_argument("--index", type=int, default=0, help="0-based line of the sequence to draw")
    parser.add_argument("--out", type=Path, required=True, help=".gif / .mp4 clip, or .png strip")
    parser.add_argument("--fps", type=int, default=12)
    parser.add_argument("--frames", type=int, default=8, help="frames in a .png strip")
    parser.add_argument("--title", default=None, help="defaults to the line of the sibling .gloss file")
    args = parser.parse_args(argv)

    from datamodules.formats import read_skels

    sequences = read_skels(args.skels)
    if not 0 <= args.index < len(sequences):
        parser.error(f"{args.skels}: --index {args.index} out of range (file has {len(sequences)} sequences)")
    seq = sequences[args.index]
    title = args.title if args.title is not None else _gloss_title(args.skels, args.index)
    if args.out.suffix.lower() in (".gif", ".mp4"):
        out = animate(seq, args.out, fps=args.fps, title=title)
    else:
        out = save_strip(args.out, {f"#{args.index}": seq}, num_frames=args.frames, title=title)
    print(out)
    return out


if __name__ == "__main__":
    main()
