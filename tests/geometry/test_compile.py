"""The whole hyperbolic branch traces as one graph: no graph break, hence no hidden host sync."""
from __future__ import annotations

import pytest
import torch

from datamodules.keypoints import PART_NAMES
from geometry import (Curvature, HyperbolicAttention, HyperbolicContrastiveLoss, HyperbolicProjection,
                      frechet_mean, frechet_weights)
from translation.hyperbolic_branch import COMPILE_OPTIONS, HyperbolicBranch


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


@pytest.mark.slow  # dynamo tracing of both modes, three batch shapes each: ~15 s on 2 shared cores
@pytest.mark.parametrize("mode", ["pooled", "token"])
def test_compiled_branch_follows_changing_batch_shapes(mode):
    """`compile_hyperbolic`'s options on the whole branch, as training calls it: batch size, frames
    and tokens change from batch to batch, and every call matches eager (dynamic=True from the
    first call failed here: dynamo could not lift float constants into `_Expmap0`'s second call)."""
    torch.manual_seed(0)
    branch = HyperbolicBranch(mode, part_dim=6, text_dim=10, hyp_dim=8)
    compiled = torch.compile(branch, backend="eager", **COMPILE_OPTIONS)
    for b, t, l in ((4, 7, 5), (4, 9, 6), (3, 8, 4)):
        parts = {p: torch.randn(b, t, 6) for p in PART_NAMES}
        frames = torch.arange(t) < torch.randint(2, t + 1, (b, 1))
        hidden, tokens = torch.randn(b, l, 10), torch.arange(l) < torch.randint(1, l + 1, (b, 1))
        loss, _ = compiled(parts, frames, hidden, tokens, diagnostics=False)
        torch.testing.assert_close(loss, branch(parts, frames, hidden, tokens, diagnostics=False)[0])
        loss.backward()
