"""geometry/ against the geoopt re-implementation of Geo-Sign's listings, at the paper's shapes.

Plain script: ``python benchmarks/geometry.py``. For each op: median CPU time (forward, and
forward + backward) of ours and of geoopt, their ratio, and the max abs error of each float32
result against a float64 ground truth. Prints a table, writes benchmarks/results/geometry.json.
Shapes (Table 3, C.2): hyp_dim 256, batch 8 and 32, 4 parts, 100 text tokens, pairwise 512 × 512.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this file is named geometry.py: the package must win the import

import geoopt  # noqa: E402
import torch  # noqa: E402

import geometry as geo  # noqa: E402
from benchmarks import geoopt_reference as listing  # noqa: E402
from benchmarks.common import RESULTS_DIR, median_time, write_results  # noqa: E402

DIM, PARTS, TOKENS, PAIRWISE, C = 256, 4, 100, 512, 1.5  # hyp_dim, parts, text length, N = M, c_init (Table 3)
REPEATS = 15


def with_backward(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    return lambda: fn().sum().backward()


def ball_points(*shape: int, max_radius: float = 0.95, seed: int = 0) -> torch.Tensor:
    """Points with radii uniform in [0, max_radius]/√c: the spread the loss pushes parts towards."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(*shape, generator=g)
    r = torch.rand(*shape[:-1], 1, generator=g) * max_radius
    return u / u.norm(dim=-1, keepdim=True) * r / C ** 0.5


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def max_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    return (x.detach().double() - truth).abs().max().item()


def bench_pairwise(ball: geoopt.PoincareBall, near: bool) -> dict:
    x = ball_points(PAIRWISE, DIM, seed=1)
    y = ball_points(PAIRWISE, DIM, seed=2)
    if near:  # every x has a near-duplicate (d ≈ 1e-2) somewhere in y: the cancellation case
        y = geo.project(x + 1e-3 * torch.randn(PAIRWISE, DIM) / DIM ** 0.5, C)[torch.randperm(PAIRWISE)]
    truth = torch.cat([geo.dist(x[i:i + 64, None].double(), y[None].double(), C) for i in range(0, PAIRWISE, 64)])
    xl, yl = leaf(x), leaf(y)
    ours = lambda: geo.pairwise_dist(xl, yl, C)  # noqa: E731
    theirs = lambda: ball.dist(xl[:, None], yl[None])  # noqa: E731
    name = "pairwise_dist near-dup" if near else "pairwise_dist"
    return row(name, f"{PAIRWISE}x{PAIRWISE}x{DIM}", ours, theirs, truth)


def bench_frechet(ball: geoopt.PoincareBall, batch: int) -> dict:
    # parts as HyperbolicProjection emits them (F.2-clipped tangents), weights from Eq. 4
    v = torch.randn(batch, PARTS, DIM, generator=torch.Generator().manual_seed(3)) / C ** 0.5 / DIM ** 0.5 * 2
    pts = geo.expmap0(geo.clip_tangent(v, C), C)
    w = geo.frechet_weights(pts, C, dim=1)
    truth = geo.frechet_mean(pts.double(), w.double(), C, dim=1, iters=200)
    p, wl = leaf(pts), w.detach()
    ours = lambda: geo.frechet_mean(p, wl, C, dim=1)  # noqa: E731
    theirs = lambda: listing.weighted_frechet_mean(p.transpose(0, 1), wl.T, ball)  # noqa: E731
    return row(f"frechet_mean B={batch}", f"{batch}x{PARTS}x{DIM}", ours, theirs, truth)


def bench_attention(ball: geoopt.PoincareBall, batch: int) -> dict:
    torch.manual_seed(4)
    att = geo.HyperbolicAttention(DIM, geo.Curvature(C, learnable=False), init_tau_attn=0.1)
    with torch.no_grad():
        att.M_key.add_(torch.randn(DIM, DIM) * 0.02)
        att.b_key.normal_(0, 0.05)
    q = ball_points(batch, PARTS, DIM, seed=5)
    tok = ball_points(batch, TOKENS, DIM, seed=6)
    mask = torch.arange(TOKENS).expand(batch, TOKENS) < torch.randint(20, TOKENS + 1, (batch, 1))
    truth = att.double()(q.double(), tok.double(), mask)[0]
    att.float()
    tau = att.tau_attn.item()
    b_point = geo.expmap0(att.b_key.detach(), C)
    ql, tl = leaf(q), leaf(tok)
    ours = lambda: att(ql, tl, mask)[0]  # noqa: E731
    theirs = lambda: listing.token_attention(ball, ql, tl, mask, att.M_key, b_point, tau)[0]  # noqa: E731
    return row(f"token attention B={batch}", f"{batch}x{PARTS} q, {TOKENS} tok, {DIM}", ours, theirs, truth)


def bench_contrastive(ball: geoopt.PoincareBall, n: int) -> dict:
    """Both losses at equal τ, margin 0 (their margins differ in sign by design) and smoothing."""
    ours_loss = geo.HyperbolicContrastiveLoss(geo.Curvature(C, learnable=False), init_margin=0.0, init_tau_logit=0.0)
    ref_loss = listing.HyperbolicContrastiveLoss(ball, initial_margin=0.0, label_smoothing=0.2)
    x, y = ball_points(n, DIM, seed=7), ball_points(n, DIM, seed=8)
    truth = ours_loss.double()(x.double(), y.double())[0]
    ours_loss.float()
    xl, yl = leaf(x), leaf(y)
    ours = lambda: ours_loss(xl, yl)[0]  # noqa: E731
    theirs = lambda: ref_loss(xl, yl)["loss"]  # noqa: E731
    return row(f"contrastive loss N={n}", f"{n}x{DIM}", ours, theirs, truth)


def bench_elementwise(ball: geoopt.PoincareBall) -> list[dict]:
    n = 32 * PARTS
    x, y = ball_points(n, DIM, seed=9), ball_points(n, DIM, seed=10)
    v = torch.randn(n, DIM, generator=torch.Generator().manual_seed(11)) / DIM ** 0.5
    xl, yl, vl = leaf(x), leaf(y), leaf(v)
    xd, yd, vd = x.double(), y.double(), v.double()
    shape = f"{n}x{DIM}"
    return [
        row("expmap0", shape, lambda: geo.expmap0(vl, C), lambda: ball.expmap0(vl), geo.expmap0(vd, C)),
        row("logmap0", shape, lambda: geo.logmap0(xl, C), lambda: ball.logmap0(xl), geo.logmap0(xd, C)),
        row("mobius_add", shape, lambda: geo.mobius_add(xl, yl, C), lambda: ball.mobius_add(xl, yl),
            geo.mobius_add(xd, yd, C)),
        row("dist", shape, lambda: geo.dist(xl, yl, C), lambda: ball.dist(xl, yl), geo.dist(xd, yd, C)),
    ]


def row(name: str, shape: str, ours: Callable, theirs: Callable, truth: torch.Tensor) -> dict:
    fwd_ours, fwd_geoopt = median_time(ours, REPEATS), median_time(theirs, REPEATS)
    bwd_ours, bwd_geoopt = median_time(with_backward(ours), REPEATS), median_time(with_backward(theirs), REPEATS)
    return {
        "op": name, "shape": shape,
        "fwd_ours_ms": 1e3 * fwd_ours, "fwd_geoopt_ms": 1e3 * fwd_geoopt, "fwd_speedup": fwd_geoopt / fwd_ours,
        "fwdbwd_ours_ms": 1e3 * bwd_ours, "fwdbwd_geoopt_ms": 1e3 * bwd_geoopt, "fwdbwd_speedup": bwd_geoopt / bwd_ours,
        "max_err_ours": max_err(ours(), truth), "max_err_geoopt": max_err(theirs(), truth),
    }


def main() -> None:
    # one intra-op thread: on a shared box a 2-thread op waits a whole scheduler quantum
    # whenever either thread is descheduled, which swamps sub-millisecond ops
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ball = geoopt.PoincareBall(c=C)
    rows = [bench_pairwise(ball, near=False), bench_pairwise(ball, near=True)]
    for batch in (8, 32):
        rows += [bench_frechet(ball, batch), bench_attention(ball, batch), bench_contrastive(ball, batch * PARTS)]
    rows += bench_elementwise(ball)
    print(f"geometry/ vs geoopt {geoopt.__version__} listings, c = {C}, CPU, torch threads {torch.get_num_threads()}")
    head = f"{'op':<26}{'fwd ours/geoopt ms':>22}{'×':>7}{'fwd+bwd ours/geoopt ms':>26}{'×':>7}{'err ours':>11}{'err geoopt':>12}"
    print(head)
    for r in rows:
        print(f"{r['op']:<26}{r['fwd_ours_ms']:>10.2f} /{r['fwd_geoopt_ms']:>9.2f}{r['fwd_speedup']:>7.1f}"
              f"{r['fwdbwd_ours_ms']:>13.2f} /{r['fwdbwd_geoopt_ms']:>10.2f}{r['fwdbwd_speedup']:>7.1f}"
              f"{r['max_err_ours']:>11.1e}{r['max_err_geoopt']:>12.1e}")
    write_results("geometry", RESULTS_DIR, {
        "c": C, "hyp_dim": DIM, "parts": PARTS, "tokens": TOKENS, "pairwise": PAIRWISE, "repeats": REPEATS,
        "geoopt": geoopt.__version__, "rows": rows,
    })

if __name__ == "__main__":
    main()
