"""The whole hyperbolic branch traces as one graph: no graph break, hence no hidden host sync."""
from __future__ import annotations

import pytest
import torch

from geometry import (Curvature, HyperbolicAttention, HyperbolicContrastiveLoss, HyperbolicProjection,
                      frechet_mean, frechet_weights)


@pytest.mark.slow  # dynamo tracing of the unrolled branch: ~20 s on 2 shared cores
def test_branch_compiles_with_fullgraph():
    torch.manual_seed(0)
    cur = Curvature(1.5)
    proj, att, crit = HyperbolicProjection(12, 8, cur), HyperbolicAttention(8, cur), HyperbolicContrastiveLoss(cur)

    def branch(parts, text, mask):
        h = proj(parts)  # (B, P, D)
        c = cur()
        pose = frechet_mean(h, frechet_weights(h, c, dim=1), c, dim=1, iters=3)  # (B, D)
        tokens = proj(text)  # (B, L, D)
        ctx, _ = att(h, tokens, mask)  # (B, P, D)
        token_loss, _ = crit(h.flatten(0, 1), ctx.flatten(0, 1))
        pooled_loss, logs = crit(pose, tokens[:, 0])
        return token_loss + pooled_loss, logs["pos_dist"]

    parts, text = torch.randn(3, 4, 12), torch.randn(3, 5, 12)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool)
    # backend="eager" runs dynamo's full capture (fullgraph raises on any break) without the
    # minutes of inductor C++ compilation this CPU box would need
    compiled = torch.compile(branch, fullgraph=True, backend="eager")
    loss, pos = compiled(parts, text, mask)
    eager_loss, eager_pos = branch(parts, text, mask)
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(pos, eager_pos)
    loss.backward()
    assert torch.isfinite(cur.raw.grad) and torch.isfinite(proj.log_scale.grad)
