"""HyperbolicBranch against the geometry functions it composes (supplement C.2)."""
from __future__ import annotations

import pytest
import torch

from datamodules.keypoints import PART_NAMES
from geometry import dist0, frechet_mean, frechet_weights
from translation.hyperbolic_branch import HyperbolicBranch, masked_mean


def _inputs(seed: int = 0, B: int = 5, T: int = 7, L: int = 6):
    g = torch.Generator().manual_seed(seed)
    parts = {p: torch.randn(B, T, 12, generator=g) for p in PART_NAMES}
    frame_mask = torch.arange(T) < torch.tensor([7, 5, 3, 7, 6])[:, None]
    hidden = torch.randn(B, L, 10, generator=g)
    target_mask = torch.arange(L) < torch.tensor([6, 2, 4, 6, 5])[:, None]
    return parts, frame_mask, hidden, target_mask


def test_pooled_branch_is_eq4_weights_frechet_mean_and_contrast():
    """The pooled branch takes Eq. 4's weights from the projection's exact d(0, h_p): the same
    loss and logged distances as `frechet_weights` and `dist0` on the points."""
    torch.manual_seed(0)
    branch = HyperbolicBranch("pooled", part_dim=12, text_dim=10, hyp_dim=8, frechet_temperature=0.7, init_scale=0.3)
    parts, frame_mask, hidden, target_mask = _inputs()
    loss, logs = branch(parts, frame_mask, hidden, target_mask)
    c = branch.curvature()
    h = branch.part_embeddings(parts, frame_mask, c)
    w = frechet_weights(h, c, dim=1, temperature=0.7)
    truth, _ = branch.contrastive(frechet_mean(h, w, c, dim=1), branch.text_proj(masked_mean(hidden, target_mask), c), c)
    assert loss.item() == pytest.approx(truth.item(), rel=1e-5)
    for p, d in zip(PART_NAMES, dist0(h, c).mean(0)):
        assert logs[f"dist0_{p}"].item() == pytest.approx(d.item(), rel=1e-5)
    with pytest.raises(ValueError, match="frechet_temperature"):
        HyperbolicBranch("pooled", part_dim=12, text_dim=10, hyp_dim=8, frechet_temperature=0.0)


def test_token_branch_logs_part_distances_only_with_diagnostics():
    torch.manual_seed(0)
    branch = HyperbolicBranch("token", part_dim=12, text_dim=10, hyp_dim=8, init_scale=0.3)
    parts, frame_mask, hidden, target_mask = _inputs(1)
    _, logs = branch(parts, frame_mask, hidden, target_mask)
    h = branch.part_embeddings(parts, frame_mask)
    torch.testing.assert_close(torch.stack([logs[f"dist0_{p}"] for p in PART_NAMES]), dist0(h, branch.curvature()).mean(0))
    _, quiet = branch(parts, frame_mask, hidden, target_mask, diagnostics=False)
    assert not any(k.startswith("dist0_") or k == "tau_attn" for k in quiet)
