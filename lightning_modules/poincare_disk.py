"""The Poincaré-disk picture of part embeddings (Geo-Sign supplement, Figure 3).

Points are taken to the tangent space at the origin (log map), reduced to 2-D by PCA there, and
mapped back into the 2-D ball of the same curvature, so distances from the origin keep their
meaning: hands drifting to the rim show up at the rim.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from geometry import expmap0, logmap0  # noqa: E402

PART_COLOURS = {"body": "tab:blue", "left": "tab:orange", "right": "tab:green", "face": "tab:red"}


def disk_coordinates(points: Tensor, c: Tensor) -> Tensor:
    """(N, P, D) points of the ball -> (N, P, 2) points of the 2-D ball with the same curvature."""
    n, p, d = points.shape
    tangent = logmap0(points.reshape(n * p, d).double(), c.double())  # (N·P, D)
    centred = tangent - tangent.mean(0, keepdim=True)
    # Top-2 principal directions; a rank below 2 (e.g. one sample) pads with zeros.
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    basis = torch.zeros(d, 2, dtype=tangent.dtype)
    basis[:, : min(2, v.shape[0])] = v[:2].T
    # Project the uncentred tangents so the origin of the ball stays the origin of the picture.
    return expmap0(tangent @ basis, c.double()).reshape(n, p, 2).float()


def poincare_disk_figure(points: Tensor, c: Tensor, part_names: Sequence[str], title: str = "") -> plt.Figure:
    """Scatter of (N, P, D) part embeddings on the disk of radius 1/√c, one colour per part."""
    xy = disk_coordinates(points, c)
    radius = float(c.rsqrt())
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.add_patch(plt.Circle((0, 0), radius, fill=False, color="black", linewidth=1))
    for i, name in enumerate(part_names):
        ax.scatter(xy[:, i, 0], xy[:, i, 1], s=6, alpha=0.6, label=name, color=PART_COLOURS.get(name))
    ax.set_xlim(-radius * 1.05, radius * 1.05)
    ax.set_ylim(-radius * 1.05, radius * 1.05)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.legend(loc="upper right", fontsize=8, markerscale=2)
    ax.set_title(title or f"Poincaré disk, c = {float(c):.3f}")
    fig.tight_layout()
    return fig
