"""Curvature and the three Geo-Sign layers: references, masking, edge cases, precision, DDP."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F

from geometry import (Curvature, HyperbolicAttention, HyperbolicContrastiveLoss, HyperbolicProjection, dist,
                      dist0, expmap0, weighted_midpoint)

from . import reference as ref


def test_curvature_starts_at_init_and_stays_positive():
    for init in (0.05, 1.0, 1.5, 10.0):
        assert Curvature(init)().item() == pytest.approx(init, rel=1e-6)
    fixed = Curvature(1.5, learnable=False)
    assert list(fixed.parameters()) == [] and fixed().item() == pytest.approx(1.5)
    cur = Curvature(0.1)
    opt = torch.optim.SGD(cur.parameters(), lr=100.0)
    for _ in range(20):  # a loss that rewards c → 0 as hard as possible
        opt.zero_grad()
        loss = cur() * 1e3
        loss.backward()
        assert torch.isfinite(cur.raw.grad)
        opt.step()
        assert cur().item() > 0
    with pytest.raises(ValueError, match="Curvature"):
        Curvature(0.0)


def test_curvature_gradient_through_geometry_is_finite():
    cur = Curvature(1.5)
    x = torch.randn(8, 16)
    d = dist(expmap0(x, cur()), expmap0(-x, cur()), cur()).sum()
    d.backward()
    assert torch.isfinite(cur.raw.grad) and cur.raw.grad != 0


def test_projection_is_eq2_with_tangent_clipping():
    cur = Curvature(1.5)
    proj = HyperbolicProjection(12, 8, cur)
    with torch.no_grad():
        proj.log_scale.fill_(0.5)
    f = torch.randn(3, 5, 12) * 10
    h = proj(f)
    assert h.shape == (3, 5, 8) and h.dtype == torch.float32
    v = proj.linear(f).double() * torch.e ** 0.5
    v = v / (1.5 ** 0.5 * v.norm(dim=-1, keepdim=True) + 1e-5).clamp_min(1)  # F.2 clip
    torch.testing.assert_close(h.double(), ref.expmap0(v, 1.5), atol=1e-6, rtol=1e-5)
    # clipping bounds √c·‖v‖ by 1, so d(0, h) ≤ 2/√c
    assert (dist0(h, cur()) <= 2 / 1.5 ** 0.5 + 1e-4).all()
    assert proj.double()(f.double()).dtype == torch.float64


def test_grouped_projection_equals_one_projection_per_group():
    cur = Curvature(1.5)
    torch.manual_seed(0)
    grouped = HyperbolicProjection(12, 8, cur, groups=3)
    with torch.no_grad():
        grouped.log_scale.copy_(torch.tensor([-1.0, 0.0, 0.5]))
    f = torch.randn(3, 4, 5, 12) * 3  # (G, B, T, dim_in)
    h = grouped(f)
    assert h.shape == (3, 4, 5, 8)
    for g in range(3):
        single = HyperbolicProjection(12, 8, cur)
        with torch.no_grad():
            for name in ("weight", "bias", "log_scale"):
                getattr(single, name).copy_(getattr(grouped, name)[g])
        torch.testing.assert_close(h[g], single(f[g]), atol=1e-6, rtol=1e-5)
    # the groups share nothing but the curvature: a loss on group 0 leaves groups 1, 2 untouched
    grouped(f)[0].sum().backward()
    assert grouped.weight.grad[0].abs().sum() > 0 and grouped.weight.grad[1:].abs().sum() == 0
    assert grouped.log_scale.grad[1:].abs().sum() == 0
    with pytest.raises(ValueError, match=r"\(3, \.\.\., 12\)"):
        grouped(torch.randn(2, 5, 12))  # wrong group count


def _attention_reference(att: HyperbolicAttention, q, tok, mask, c):
    """Loop over batch and parts in float64, from the definitions in supplement C.2.2."""
    M, b = att.M_key.double(), expmap0(att.b_key.double(), c)
    tau = (torch.sigmoid(att.tau_attn_logit.double()) * 1.99 + 0.01)
    ctx = torch.zeros_like(q)
    weights = torch.zeros(q.shape[0], q.shape[1], tok.shape[1], dtype=torch.float64)
    for i in range(q.shape[0]):
        valid = tok[i][mask[i]]
        keys = ref.mobius_add(ref.expmap0(ref.logmap0(valid, c) @ M.T, c), b, c)
        for p in range(q.shape[1]):
            a = torch.softmax(-ref.dist(q[i, p], keys, c) / tau, 0)
            weights[i, p, mask[i]] = a
            ctx[i, p] = weighted_midpoint(valid, a, c, dim=0)
    return ctx, weights


def test_attention_matches_per_part_reference_and_ignores_padding():
    torch.manual_seed(0)
    cur = Curvature(1.5)
    att = HyperbolicAttention(8, cur, init_tau_attn=0.3)
    with torch.no_grad():
        att.M_key.add_(torch.randn(8, 8) * 0.2)
        att.b_key.normal_(0, 0.2)
    q = expmap0(torch.randn(3, 4, 8) * 0.5, cur())
    tok = expmap0(torch.randn(3, 6, 8) * 0.5, cur())
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 1, 1]], dtype=torch.bool)
    ctx, w = att(q, tok, mask)
    assert ctx.shape == (3, 4, 8) and w.shape == (3, 4, 6)
    ref_ctx, ref_w = _attention_reference(att, q.double(), tok.double(), mask, 1.5)
    torch.testing.assert_close(w.double(), ref_w, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ctx.double(), ref_ctx, atol=2e-5, rtol=1e-4)
    assert (w[~mask.unsqueeze(1).expand_as(w)] == 0).all()
    noisy = tok.clone()
    noisy[~mask] = expmap0(torch.randn(int((~mask).sum()), 8), cur())
    torch.testing.assert_close(att(q, noisy, mask)[0], ctx)


def test_attention_all_padding_row_and_errors():
    cur = Curvature(1.0)
    att = HyperbolicAttention(4, cur)
    q, tok = expmap0(torch.randn(2, 3, 4), 1.0), expmap0(torch.randn(2, 5, 4), 1.0)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    ctx, w = att(q, tok, mask)
    assert torch.isfinite(ctx).all() and (w[1] == 0).all() and (ctx[1] == 0).all()
    with pytest.raises(ValueError, match="HyperbolicAttention: mask"):
        att(q, tok, mask.float())
    with pytest.raises(ValueError, match="HyperbolicAttention: queries"):
        att(q[0], tok, mask)


def _contrastive_reference(x, y, c, tau, margin, smoothing):
    d = ref.dist(x[:, None], y[None], c)
    logits = -d / tau + margin * (1 - torch.eye(len(x), dtype=d.dtype))
    logp = torch.log_softmax(logits, 1)
    n = len(x)
    target = torch.full((n, n), smoothing / n, dtype=d.dtype) + (1 - smoothing) * torch.eye(n, dtype=d.dtype)
    return -(target * logp).sum(1).mean(), d.diag().mean()


def test_contrastive_loss_matches_reference_and_logs():
    cur = Curvature(1.5)
    crit = HyperbolicContrastiveLoss(cur, label_smoothing=0.2, init_margin=0.3)
    x = expmap0(torch.randn(6, 8), 1.5)
    y = expmap0(torch.randn(6, 8), 1.5)
    loss, logs = crit(x, y)
    tau = torch.sigmoid(torch.tensor(1.0, dtype=torch.float64)) * 1.99 + 0.01
    truth, pos = _contrastive_reference(x.double(), y.double(), 1.5, tau, 0.3, 0.2)
    assert loss.item() == pytest.approx(truth.item(), rel=1e-5)
    assert set(logs) == {"tau", "margin", "pos_dist"}
    assert logs["tau"].item() == pytest.approx(tau.item(), rel=1e-6)
    assert logs["margin"].item() == pytest.approx(0.3) and logs["pos_dist"].item() == pytest.approx(pos.item(), rel=1e-5)
    assert not logs["tau"].requires_grad
    loss.backward()
    for p in (crit.tau_logit, crit.margin, cur.raw):
        assert torch.isfinite(p.grad) and p.grad != 0
    with torch.no_grad():
        crit.margin.fill_(-1.0)  # the margin in use is never negative
    assert crit(x, y)[1]["margin"].item() == 0.0


def test_grouped_contrastive_loss_is_the_mean_over_groups():
    crit = HyperbolicContrastiveLoss(Curvature(1.5), label_smoothing=0.2, init_margin=0.3)
    x = expmap0(torch.randn(4, 6, 8), 1.5)  # (G, B, D): 4 parts, 6 samples
    y = expmap0(torch.randn(4, 6, 8), 1.5)
    loss, logs = crit(x, y)
    per_group = [crit(x[g], y[g]) for g in range(4)]
    assert loss.item() == pytest.approx(torch.stack([l for l, _ in per_group]).mean().item(), rel=1e-6)
    assert logs["pos_dist"].item() == pytest.approx(torch.stack([s["pos_dist"] for _, s in per_group]).mean().item(),
                                                    rel=1e-6)
    with pytest.raises(ValueError, match=r"\(G, B, D\)"):
        crit(x, y[:, :5])


def test_single_pair_gives_zero_loss_with_graph():
    cur = Curvature(1.5)
    crit = HyperbolicContrastiveLoss(cur)
    x = expmap0(torch.randn(1, 8), 1.5).requires_grad_()
    loss, logs = crit(x, expmap0(torch.randn(1, 8), 1.5))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(crit.tau_logit.grad)
    assert torch.isfinite(logs["pos_dist"])


def test_layers_under_bf16_autocast():
    torch.manual_seed(0)
    cur = Curvature(1.5)
    proj, att = HyperbolicProjection(16, 8, cur), HyperbolicAttention(8, cur)
    crit = HyperbolicContrastiveLoss(cur)
    parts, text = torch.randn(4, 3, 16).bfloat16(), torch.randn(4, 7, 16).bfloat16()
    mask = torch.rand(4, 7) > 0.3
    mask[:, 0] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, t = proj(parts), proj(text)
        ctx, _ = att(h, t, mask)
        loss, _ = crit(h.reshape(-1, 8), ctx.reshape(-1, 8))
    assert h.dtype == torch.float32 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for p in [*proj.parameters(), *att.parameters(), *crit.parameters()]:
        assert p.grad is None or torch.isfinite(p.grad).all()
    assert torch.isfinite(cur.raw.grad)


# ------------------------------- DDP: 2 gloo processes on CPU -------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, x: torch.Tensor, y: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist_

    dist_.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        crit = HyperbolicContrastiveLoss(Curvature(1.5), gather_negatives=True)
        local_y = y[rank * 3:(rank + 1) * 3].clone().requires_grad_()
        loss, _ = crit(x[rank * 3:(rank + 1) * 3], local_y)
        loss.backward()
        out[rank] = (loss.detach(), local_y.grad)
    finally:
        dist_.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters importing torch: ~10–25 s on 2 shared cores
def test_gather_negatives_contrasts_against_the_global_batch():
    mp = torch.multiprocessing.get_context("spawn")
    x = expmap0(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), 1.5)
    y = expmap0(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), 1.5)
    with mp.Manager() as manager:
        out = manager.dict()
        torch.multiprocessing.start_processes(_ddp_worker, args=(_free_port(), x, y, out), nprocs=2,
                                              start_method="spawn")
        out = dict(out)
    # single-process truth: rank r's anchors against all 6 targets, positives at r·3 + i
    crit = HyperbolicContrastiveLoss(Curvature(1.5))
    yy = y.clone().requires_grad_()
    total = 0
    for r in range(2):
        d = -torch.stack([dist(x[r * 3 + i], yy, crit.curvature()) for i in range(3)])  # (3, 6)
        tau = torch.sigmoid(crit.tau_logit) * 1.99 + 0.01
        labels = torch.arange(3) + 3 * r
        logits = d / tau + crit.margin * (1 - F.one_hot(labels, 6))
        loss_r = F.cross_entropy(logits, labels, label_smoothing=0.2)
        assert out[r][0].item() == pytest.approx(loss_r.item(), rel=1e-5)
        total = total + loss_r
    total.backward()  # all_gather's backward sums every rank's gradient into the owner's slice
    torch.testing.assert_close(torch.cat([out[0][1], out[1][1]]), yy.grad, atol=1e-6, rtol=1e-4)


def test_projection_init_scale_keeps_points_off_the_clip_sphere():
    """With listing 4's s = 1, wide features all land on the F.2 clip sphere d(0, h) = 2/√c; a
    MERU-style s = dim**-0.5 starts them spread inside the ball."""
    from geometry import Curvature, HyperbolicProjection, dist0

    torch.manual_seed(0)
    c = Curvature(1.5, learnable=False)
    x = torch.randn(32, 64)
    saturated = dist0(HyperbolicProjection(64, 64, c)(x), c())
    torch.testing.assert_close(saturated, torch.full_like(saturated, 2 / 1.5 ** 0.5), rtol=1e-3, atol=1e-3)
    spread = dist0(HyperbolicProjection(64, 64, c, init_scale=64 ** -0.5)(x), c())
    assert float(spread.max()) < 2 / 1.5 ** 0.5 - 0.1 and float(spread.std()) > 0.05
    with pytest.raises(ValueError, match="init_scale"):
        HyperbolicProjection(4, 4, c, init_scale=0.0)
