"""geometry/ against the geoopt re-implementation of Geo-Sign's listings, at the paper's shapes.

Plain script: ``python benchmarks/geometry.py [--errors-only] [--out DIR]``. For each op: median
CPU time (forward, and forward + backward) of ours and of geoopt, their ratio, and the max abs
error of each float32 result against signlab's own float64 path (the same functions on float64
inputs; the Fréchet mean with 300 steps). geoopt in float64 cannot serve as the reference: its
maps are off by up to ~1e-7 in float64, as much as float32 rounding. So the reference is checked
instead, when mpmath is installed: the four elementary maps against mpmath at 50 digits on
sampled points (geoopt's float64 maps beside them), and the float64 Fréchet mean by its
stationarity residual |Σ w log_μ x| evaluated in mpmath; recorded as ``reference_check_mpmath``.
``--errors-only`` skips the timing (seconds instead of minutes). Prints a table, writes
``geometry.json``. Shapes (Table 3, C.2): hyp_dim 256, batch 8 and 32, 4 parts, 100 text tokens,
pairwise 512 × 512.
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
from benchmarks.common import median_time, parse_args, write_results  # noqa: E402

DIM, PARTS, TOKENS, PAIRWISE, C = 256, 4, 100, 512, 1.5  # hyp_dim, parts, text length, N = M, c_init (Table 3)
REPEATS = 15
REFERENCE_ITERS = 300  # steps of the float64 Fréchet reference; reference_check measures how converged it is


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


def bench_pairwise(ball: geoopt.PoincareBall, near: bool, timing: bool) -> dict:
    x = ball_points(PAIRWISE, DIM, seed=1)
    y = ball_points(PAIRWISE, DIM, seed=2)
    if near:  # every x has a near-duplicate (d ≈ 1e-2) somewhere in y: the cancellation case
        y = geo.project(x + 1e-3 * torch.randn(PAIRWISE, DIM) / DIM ** 0.5, C)[torch.randperm(PAIRWISE)]
    truth = torch.cat([geo.dist(x[i:i + 64, None].double(), y[None].double(), C) for i in range(0, PAIRWISE, 64)])
    xl, yl = leaf(x), leaf(y)
    ours = lambda: geo.pairwise_dist(xl, yl, C)  # noqa: E731
    theirs = lambda: ball.dist(xl[:, None], yl[None])  # noqa: E731
    name = "pairwise_dist near-dup" if near else "pairwise_dist"
    return row(name, f"{PAIRWISE}x{PAIRWISE}x{DIM}", ours, theirs, truth, timing)


def bench_frechet(ball: geoopt.PoincareBall, batch: int, timing: bool) -> dict:
    # parts as HyperbolicProjection emits them (F.2-clipped tangents), weights from Eq. 4
    v = torch.randn(batch, PARTS, DIM, generator=torch.Generator().manual_seed(3)) / C ** 0.5 / DIM ** 0.5 * 2
    pts = geo.expmap0(geo.clip_tangent(v, C), C)
    w = geo.frechet_weights(pts, C, dim=1)
    truth = geo.frechet_mean(pts.double(), w.double(), C, dim=1, iters=REFERENCE_ITERS)
    p, wl = leaf(pts), w.detach()
    ours = lambda: geo.frechet_mean(p, wl, C, dim=1)  # noqa: E731
    theirs = lambda: listing.weighted_frechet_mean(p.transpose(0, 1), wl.T, ball)  # noqa: E731
    return row(f"frechet_mean B={batch}", f"{batch}x{PARTS}x{DIM}", ours, theirs, truth, timing)


def bench_attention(ball: geoopt.PoincareBall, batch: int, timing: bool) -> dict:
    torch.manual_seed(4)
    att = geo.HyperbolicAttention(DIM, geo.Curvature(C, learnable=False), init_tau_attn=0.1)
    with torch.no_grad():
        att.M_key.add_(torch.randn(DIM, DIM) * 0.02)
        att.b_key.normal_(0, 0.05)
    q = ball_points(batch, PARTS, DIM, seed=5)
    tok = ball_points(batch, TOKENS, DIM, seed=6)
    mask = torch.arange(TOKENS).expand(batch, TOKENS) < torch.randint(20, TOKENS + 1, (batch, 1))
    tau = att.tau_attn.item()
    truth = att.double()(q.double(), tok.double(), mask)[0]
    att.float()
    b_point = geo.expmap0(att.b_key.detach(), C)
    ql, tl = leaf(q), leaf(tok)
    ours = lambda: att(ql, tl, mask)[0]  # noqa: E731
    theirs = lambda: listing.token_attention(ball, ql, tl, mask, att.M_key, b_point, tau)[0]  # noqa: E731
    return row(f"token attention B={batch}", f"{batch}x{PARTS} q, {TOKENS} tok, {DIM}", ours, theirs, truth, timing)


def bench_contrastive(ball: geoopt.PoincareBall, n: int, timing: bool) -> dict:
    """Both losses at equal τ, margin 0 (their margins differ in sign by design) and smoothing."""
    ours_loss = geo.HyperbolicContrastiveLoss(geo.Curvature(C, learnable=False), init_margin=0.0, init_tau_logit=0.0)
    ref_loss = listing.HyperbolicContrastiveLoss(ball, initial_margin=0.0, label_smoothing=0.2)
    x, y = ball_points(n, DIM, seed=7), ball_points(n, DIM, seed=8)
    truth = ours_loss.double()(x.double(), y.double())[0]
    ours_loss.float()
    xl, yl = leaf(x), leaf(y)
    ours = lambda: ours_loss(xl, yl)[0]  # noqa: E731
    theirs = lambda: ref_loss(xl, yl)["loss"]  # noqa: E731
    return row(f"contrastive loss N={n}", f"{n}x{DIM}", ours, theirs, truth, timing)


def bench_elementwise(ball: geoopt.PoincareBall, timing: bool) -> list[dict]:
    n = 32 * PARTS
    x, y = ball_points(n, DIM, seed=9), ball_points(n, DIM, seed=10)
    v = torch.randn(n, DIM, generator=torch.Generator().manual_seed(11)) / DIM ** 0.5
    xl, yl, vl = leaf(x), leaf(y), leaf(v)
    xd, yd, vd = x.double(), y.double(), v.double()
    shape = f"{n}x{DIM}"
    return [
        row("expmap0", shape, lambda: geo.expmap0(vl, C), lambda: ball.expmap0(vl), geo.expmap0(vd, C), timing),
        row("logmap0", shape, lambda: geo.logmap0(xl, C), lambda: ball.logmap0(xl), geo.logmap0(xd, C), timing),
        row("mobius_add", shape, lambda: geo.mobius_add(xl, yl, C), lambda: ball.mobius_add(xl, yl),
            geo.mobius_add(xd, yd, C), timing),
        row("dist", shape, lambda: geo.dist(xl, yl, C), lambda: ball.dist(xl, yl), geo.dist(xd, yd, C), timing),
    ]


def reference_check(samples: int = 32, digits: int = 50) -> dict | None:
    """How exact the float64 reference is: max abs error against mpmath at ``digits`` digits on
    ``samples`` points of the benchmark's spread for the four elementary maps, of signlab's float64
    path and, for comparison, of geoopt's float64 ops; and the float64 Fréchet mean's stationarity
    residual |Σ w log_μ x| evaluated in mpmath. None without mpmath."""
    try:
        import mpmath
    except ImportError:
        return None
    mpmath.mp.dps = digits
    c = mpmath.mpf(C)
    sc = mpmath.sqrt(c)
    ball64 = geoopt.PoincareBall(c=C).to(torch.float64)
    x, y = ball_points(samples, DIM, seed=12).double(), ball_points(samples, DIM, seed=13).double()
    v = torch.randn(samples, DIM, generator=torch.Generator().manual_seed(14)).double() / DIM ** 0.5

    def vec(t):
        return [mpmath.mpf(float(a)) for a in t]

    def dot(a, b):
        return mpmath.fsum(p * q for p, q in zip(a, b))

    def norm(a):
        return mpmath.sqrt(dot(a, a))

    def mobius_add(a, b):
        ab, aa, bb = dot(a, b), dot(a, a), dot(b, b)
        den = 1 + 2 * c * ab + c ** 2 * aa * bb
        return [((1 + 2 * c * ab + c * bb) * p + (1 - c * aa) * q) / den for p, q in zip(a, b)]

    def logmap(mu, point):
        u = mobius_add([-a for a in mu], point)
        lam = 2 / (1 - c * dot(mu, mu))
        nu = norm(u)
        return [2 / (sc * lam) * mpmath.atanh(sc * nu) * a / nu for a in u]

    ops = {"signlab_float64": {"expmap0": lambda t: geo.expmap0(t, C), "logmap0": lambda t: geo.logmap0(t, C),
                               "mobius_add": lambda a, b: geo.mobius_add(a, b, C), "dist": lambda a, b: geo.dist(a, b, C)},
           "geoopt_float64": {"expmap0": ball64.expmap0, "logmap0": ball64.logmap0, "mobius_add": ball64.mobius_add,
                              "dist": ball64.dist}}
    errors = {impl: dict.fromkeys(table, 0.0) for impl, table in ops.items()}
    for i in range(samples):
        xi, yi, vi = vec(x[i]), vec(y[i]), vec(v[i])
        nv, nx = norm(vi), norm(xi)
        exact = {"expmap0": [mpmath.tanh(sc * nv) * a / (sc * nv) for a in vi],
                 "logmap0": [mpmath.atanh(sc * nx) * a / (sc * nx) for a in xi],
                 "mobius_add": mobius_add(xi, yi),
                 "dist": [2 / sc * mpmath.atanh(sc * norm(mobius_add([-a for a in xi], yi)))]}
        inputs = {"expmap0": (v[i],), "logmap0": (x[i],), "mobius_add": (x[i], y[i]), "dist": (x[i], y[i])}
        for impl, table in ops.items():
            for op, fn in table.items():
                got = fn(*inputs[op]).reshape(-1)
                errors[impl][op] = max(errors[impl][op], max(abs(float(e) - float(g)) for e, g in zip(exact[op], got)))
    # the Fréchet rows' reference: its gradient Σ w log_μ x vanishes at the true weighted mean
    tangents = torch.randn(2, PARTS, DIM, generator=torch.Generator().manual_seed(3)) / C ** 0.5 / DIM ** 0.5 * 2
    pts = geo.expmap0(geo.clip_tangent(tangents, C), C).double()
    w = geo.frechet_weights(pts, C, dim=1)
    mu = geo.frechet_mean(pts, w, C, dim=1, iters=REFERENCE_ITERS)
    residual = 0.0
    for b in range(pts.shape[0]):
        mu_b = vec(mu[b])
        total = [mpmath.mpf(0)] * DIM
        for k in range(PARTS):
            total = [t + mpmath.mpf(float(w[b, k])) * g for t, g in zip(total, logmap(mu_b, vec(pts[b, k])))]
        residual = max(residual, float(norm(total)))
    return {"max_abs_err": errors, "frechet_mean_float64_stationarity": residual, "samples": samples, "digits": digits}


def row(name: str, shape: str, ours: Callable, theirs: Callable, truth: torch.Tensor, timing: bool) -> dict:
    out = {"op": name, "shape": shape,
           "max_err_ours": max_err(ours(), truth), "max_err_geoopt": max_err(theirs(), truth)}
    if timing:
        fwd_ours, fwd_geoopt = median_time(ours, REPEATS), median_time(theirs, REPEATS)
        bwd_ours, bwd_geoopt = median_time(with_backward(ours), REPEATS), median_time(with_backward(theirs), REPEATS)
        out |= {"fwd_ours_ms": 1e3 * fwd_ours, "fwd_geoopt_ms": 1e3 * fwd_geoopt, "fwd_speedup": fwd_geoopt / fwd_ours,
                "fwdbwd_ours_ms": 1e3 * bwd_ours, "fwdbwd_geoopt_ms": 1e3 * bwd_geoopt,
                "fwdbwd_speedup": bwd_geoopt / bwd_ours}
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, {"errors-only": "errors only, no timing"})
    timing = not args.errors_only
    # one intra-op thread: on a shared box a 2-thread op waits a whole scheduler quantum
    # whenever either thread is descheduled, which swamps sub-millisecond ops
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        ball = geoopt.PoincareBall(c=C)
        rows = [bench_pairwise(ball, False, timing), bench_pairwise(ball, True, timing)]
        for batch in (8, 32):
            rows += [bench_frechet(ball, batch, timing), bench_attention(ball, batch, timing),
                     bench_contrastive(ball, batch * PARTS, timing)]
        rows += bench_elementwise(ball, timing)
        check = reference_check()
    finally:
        torch.set_num_threads(threads)  # callers (the tests) keep their own setting
    print(f"geometry/ vs geoopt {geoopt.__version__} listings, c = {C}, CPU, one torch thread; "
          "errors against signlab's float64 path")
    head = f"{'op':<26}{'fwd ours/geoopt ms':>22}{'×':>7}{'fwd+bwd ours/geoopt ms':>26}{'×':>7}{'err ours':>11}{'err geoopt':>12}"
    print(head)
    for r in rows:
        times = (f"{r['fwd_ours_ms']:>10.2f} /{r['fwd_geoopt_ms']:>9.2f}{r['fwd_speedup']:>7.1f}"
                 f"{r['fwdbwd_ours_ms']:>13.2f} /{r['fwdbwd_geoopt_ms']:>10.2f}{r['fwdbwd_speedup']:>7.1f}"
                 if timing else f"{'–':>22}{'':>7}{'–':>26}{'':>7}")
        print(f"{r['op']:<26}{times}{r['max_err_ours']:>11.1e}{r['max_err_geoopt']:>12.1e}")
    if check is None:
        print("float64 reference not checked against mpmath (not installed)")
    else:
        for impl, errors in check["max_abs_err"].items():
            print(f"{impl} against mpmath ({check['digits']} digits): " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
        print(f"float64 Fréchet mean, |Σ w log_μ x| in mpmath: {check['frechet_mean_float64_stationarity']:.1e}")
    result = {"command": "python benchmarks/geometry.py" + (" --errors-only" if args.errors_only else ""),
              "timed": timing, "c": C, "hyp_dim": DIM, "parts": PARTS, "tokens": TOKENS, "pairwise": PAIRWISE,
              "repeats": REPEATS if timing else None, "geoopt": geoopt.__version__,
              "reference": f"signlab's float64 path (Fréchet mean: {REFERENCE_ITERS} steps)",
              "reference_check_mpmath": check, "rows": rows}
    write_results("geometry", args.out, result)
    return result


if __name__ == "__main__":
    main()
