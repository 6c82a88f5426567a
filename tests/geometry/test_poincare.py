"""geometry.poincare against float64 textbook formulas and geoopt, identities, edge cases."""
from __future__ import annotations

import geoopt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geometry import (clip_tangent, clipped_expmap0, dist, dist0, expmap, expmap0, logmap, logmap0, mobius_add, mobius_affine,
                      mobius_matvec, pairwise_dist, project)
from geometry.poincare import BALL_EPS

from . import reference as ref

CURVATURES = [0.05, 1.0, 1.5, 10.0]


def _pair(c: float, n: int = 64, d: int = 16, max_radius: float = 0.99):
    return ref.ball_points(n, d, c, max_radius, seed=1), ref.ball_points(n, d, c, max_radius, seed=2)


@pytest.mark.parametrize("c", CURVATURES)
def test_float32_matches_float64_textbook(c):
    x, y = _pair(c)
    x32, y32 = x.float(), y.float()
    v = torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) / c ** 0.5
    M = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) / 4
    cases = {
        # outputs that are points are projected to ‖x‖ ≤ (1 − 4e-3)/√c: so is the truth
        "mobius_add": (mobius_add(x32, y32, c), project(ref.mobius_add(x32.double(), y32.double(), c), c)),
        "dist": (dist(x32, y32, c), ref.dist(x32.double(), y32.double(), c)),
        "dist0": (dist0(x32, c), ref.dist(torch.zeros_like(x), x32.double(), c)),
        "logmap0": (logmap0(x32, c), ref.logmap0(x32.double(), c)),
        "expmap0": (expmap0(v.float() / 4, c), ref.expmap0(v.float().double() / 4, c)),
        "logmap": (logmap(x32, y32, c), ref.logmap(x32.double(), y32.double(), c)),
        "expmap": (expmap(x32, v.float() / 8, c), project(ref.expmap(x32.double(), v.float().double() / 8, c), c)),
        "mobius_matvec": (mobius_matvec(M.float(), x32 / 2, c),
                          ref.expmap0(ref.logmap0(x32.double() / 2, c) @ M.float().double().T, c)),
    }
    for name, (ours, truth) in cases.items():
        assert ours.dtype == torch.float32, name
        # radius ≤ 0.99/√c: errors are conditioning-limited, λ ≈ 50 amplifies float32 rounding
        scale = truth.abs().max().clamp_min(1.0)
        assert (ours.double() - truth).abs().max() <= 2e-4 * scale, name


@pytest.mark.parametrize("c", [0.5, 1.5])
def test_agrees_with_geoopt_float64(c):
    ball = geoopt.PoincareBall(c=c)
    x, y = _pair(c, max_radius=0.95)
    M = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) / 8  # stays off the clamp
    # geoopt clamps artanh's argument at 1 − 1e-7, which costs it ~1e-6 on far pairs even in
    # float64 (our dist matches the textbook arcosh form to 1e-15, below)
    tol = dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mobius_add(x, y, c), ball.mobius_add(x, y, project=False), **tol)
    torch.testing.assert_close(dist(x, y, c), ball.dist(x, y), **tol)
    torch.testing.assert_close(logmap(x, y, c), ball.logmap(x, y), **tol)
    torch.testing.assert_close(logmap0(x, c), ball.logmap0(x), **tol)
    torch.testing.assert_close(expmap(x, y / 3, c), ball.expmap(x, y / 3, project=False), **tol)
    torch.testing.assert_close(mobius_matvec(M, x, c), ball.mobius_matvec(M, x, project=False), **tol)
    torch.testing.assert_close(pairwise_dist(x, y, c), ball.dist(x[:, None], y[None]), **tol)
    torch.testing.assert_close(pairwise_dist(x, y, c), ref.dist(x[:, None], y[None], c), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c", [0.05, 1.5, 10.0])
def test_mobius_affine_is_matvec_then_add(c):
    x = ref.ball_points(40, 16, c, 0.99, seed=3).view(5, 8, 16)
    x[0, 0] = 0  # the origin maps to b
    M = torch.randn(12, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    b = ref.ball_points(1, 12, c, 0.9, seed=5)[0]
    truth = mobius_add(mobius_matvec(M, x, c), b, c)
    torch.testing.assert_close(mobius_affine(M, x, b, c), truth, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(mobius_affine(M.float(), x.float(), b.float(), c).double(), truth, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mobius_affine(torch.zeros(12, 16), x.float(), b.float(), c), b.float().expand(5, 8, 12))
    with pytest.raises(ValueError, match="mobius_affine"):
        mobius_affine(M, x, b[:3], c)


@pytest.mark.parametrize("c", [0.05, 1.5, 10.0])
@pytest.mark.parametrize("m_scale", [0.1, 1.0, 30.0])  # 30: M ⊗ x lands on the projection radius
def test_mobius_affine_gradients_are_those_of_matvec_then_add(c, m_scale):
    """Its backward is written by hand: every input's gradient (the origin, points near the
    boundary, both projections binding) equals autograd's through mobius_add(mobius_matvec)."""
    g = torch.Generator().manual_seed(int(m_scale * 10) + int(c * 100))
    x = ref.ball_points(24, 6, c, 0.99, seed=7).view(4, 6, 6)
    x[0, 0] = 0
    x[0, 1] *= 1.001 / (c ** 0.5 * x[0, 1].norm())  # just past the boundary: log_0's clamp binds
    leaves = [(torch.randn(5, 6, dtype=torch.float64, generator=g) * m_scale).requires_grad_(), x.requires_grad_(),
              ref.ball_points(1, 5, c, 0.95, seed=8)[0].requires_grad_(),
              torch.tensor(c, dtype=torch.float64, requires_grad=True)]
    cotangent = torch.randn(4, 6, 5, dtype=torch.float64, generator=g)
    ours = torch.autograd.grad((mobius_affine(*leaves) * cotangent).sum(), leaves)
    M, x, b, ct = leaves
    theirs = torch.autograd.grad((mobius_add(mobius_matvec(M, x, ct), b, ct) * cotangent).sum(), leaves)
    for name, a, t in zip(("M", "x", "b", "c"), ours, theirs):
        torch.testing.assert_close(a, t, atol=1e-9, rtol=1e-7, msg=name)


def test_small_arguments_are_accurate_where_geoopt_is_not():
    # geoopt's artanh as log(1+x) − log(1−x) loses everything below ~1e-7 (1 + 1e-8 rounds to 1)
    c = 1.0
    x = torch.tensor([[1e-8, 0.0, 0.0]])
    assert dist0(x, c).item() == pytest.approx(2e-8, rel=1e-6)
    assert logmap0(x, c)[0, 0].item() == pytest.approx(1e-8, rel=1e-6)
    y = torch.tensor([[0.3, 0.2, 0.1]])
    z = y + torch.tensor([[1e-6, 0.0, 0.0]])
    truth = ref.dist(y.double(), z.double(), c).item()
    assert dist(y, z, c).item() == pytest.approx(truth, rel=1e-3)


def test_pairwise_matches_broadcast_and_keeps_near_duplicates_accurate():
    c = 1.5
    x = ref.ball_points(256, 64, c, 0.99, seed=7).float()
    y = (x + 2e-3 / c ** 0.5 * torch.randn(256, 64, generator=torch.Generator().manual_seed(8)) / 8)
    y = project(y, c)[torch.randperm(256, generator=torch.Generator().manual_seed(9))]
    truth = ref.dist(x.double()[:, None], y.double()[None], c)  # (N, M)
    ours = pairwise_dist(x, y, c)
    assert ours.shape == (256, 256)
    assert (ours.double() - truth).abs().max() < 1e-4  # far pairs: absolute
    near = truth < 0.05
    assert near.sum() >= 256  # every row has its near-duplicate
    assert ((ours.double() - truth).abs()[near] / truth[near]).max() < 1e-3
    # without refinement the Gram identity cancels (this is what refine fixes)
    raw = pairwise_dist(x, y, c, refine=0)
    assert ((raw.double() - truth).abs()[near] / truth[near]).max() > 1e-2


def test_pairwise_exact_columns_are_the_given_ones():
    """`exact=` (a contrastive loss's positives): those columns come from direct differences even
    when they are not a row's nearest, the rest from the Gram form; gradients gradchecked."""
    c = 1.5
    x = ref.ball_points(6, 32, c, 0.95, seed=21)
    twins = project(x + 1e-4 * torch.randn(6, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(22)), c)
    y = torch.cat([twins, x[:2] + 1e-6])  # row i's column i is a near-duplicate; rows 0, 1 have a nearer one
    truth = ref.dist(x[:, None], y[None], c)  # (6, 8)
    cols = torch.arange(6)[:, None]  # (6, 1): the twins
    ours = pairwise_dist(x.float(), y.float(), c, exact=cols).double()
    rel = (ours - truth).abs() / truth
    assert rel.diagonal().max() < 1e-3  # exact where asked, though rows 0, 1 have nearer columns
    assert rel[0, 6] > 1e-2 and rel[1, 7] > 1e-2  # ... which stay in the cancelling Gram form
    torch.testing.assert_close(ours[:, :6].diagonal(), dist(x.float(), twins.float(), c).double())
    leaves = [t[:4, :4].clone().requires_grad_() for t in (x, twins)] + [torch.tensor(c, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda a, b, k: pairwise_dist(a, b, k, exact=torch.tensor([[1], [0], [3], [2]])), leaves)
    with pytest.raises(ValueError, match="exact must be int64"):
        pairwise_dist(x, y, c, exact=cols.int())


def test_pairwise_batched_and_curvature_broadcast():
    c = torch.tensor([[[0.5]], [[2.0]]])  # (2, 1, 1): one curvature per batch element
    x = ref.ball_points(10, 8, 2.0, 0.9, seed=1).view(2, 5, 8)
    y = ref.ball_points(8, 8, 2.0, 0.9, seed=2).view(2, 4, 8)
    expected = dist(x[:, :, None], y[:, None], c.unsqueeze(-1))
    torch.testing.assert_close(pairwise_dist(x, y, c), expected)


CURV = st.sampled_from([0.05, 0.3, 1.0, 1.5, 4.0, 10.0])
RADII = st.sampled_from([0.0, 1e-6, 0.3, 0.9, 0.996])


def _point(seed: int, radius: float, c: float, d: int = 6) -> torch.Tensor:
    u = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return (u / u.norm() * radius / c ** 0.5).float()


@settings(max_examples=30, deadline=None)
@given(c=CURV, seed=st.integers(0, 10_000), rx=RADII, ry=RADII, rz=RADII)
def test_identities(c, seed, rx, ry, rz):
    x, y, z = _point(seed, rx, c), _point(seed + 1, ry, c), _point(seed + 2, rz, c)
    tol = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mobius_add(x, torch.zeros_like(x), c), x, **tol)
    torch.testing.assert_close(mobius_add(-x, x, c), torch.zeros_like(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(dist(x, y, c), dist(y, x, c), **tol)
    if c ** 0.5 * dist(x, y, c) < 5.5:  # else (−x) ⊕ y lies past the projection radius, 2 artanh(0.996) = 6.2
        torch.testing.assert_close(dist(x, y, c), dist0(mobius_add(-x, y, c), c), atol=2e-3, rtol=2e-4)
        torch.testing.assert_close(expmap(x, logmap(x, y, c), c), y, atol=1e-3 / c ** 0.5, rtol=0)
    assert dist(x, z, c) <= dist(x, y, c) + dist(y, z, c) + 1e-3
    v = _point(seed + 3, 3.0 * rx, c)  # tangent vectors up to √c‖v‖ = 3 (tanh(3) < 1 − 4e-3)
    torch.testing.assert_close(logmap0(expmap0(v, c), c), v, atol=2e-4, rtol=1e-3)


@settings(max_examples=25, deadline=None)
@given(c=CURV, seed=st.integers(0, 10_000), r=st.sampled_from([0.0, 1e-8, 0.5, 0.999, 1.0]))
def test_values_and_gradients_finite_at_origin_boundary_and_coincidence(c, seed, r):
    x = _point(seed, r, c).requires_grad_()
    y = x.detach().clone().requires_grad_()  # coincident pair
    ct = torch.tensor(c, requires_grad=True)
    M = torch.eye(6)
    outs = [dist(x, y, ct), dist0(x, ct), logmap0(x, ct), expmap0(x, ct), mobius_add(x, y, ct), logmap(x, y, ct),
            expmap(x, y, ct), mobius_matvec(M, x, ct), project(x, ct), pairwise_dist(x[None], y[None], ct),
            mobius_affine(M, x, y.detach() / 2, ct)]
    total = sum(o.sum() for o in outs)
    total.backward()
    for t in (total, x.grad, y.grad, ct.grad):
        assert torch.isfinite(t).all()
    assert dist(x, y, ct).item() == 0.0


def test_project_and_clip():
    c = 2.0
    x = torch.randn(100, 8) * 10
    assert (project(x, c).norm(dim=-1) <= (1 - BALL_EPS) / c ** 0.5 * (1 + 1e-6)).all()
    inside = torch.randn(5, 8) * 0.01
    torch.testing.assert_close(project(inside, c), inside)
    v = torch.randn(100, 8) * 5
    clipped = clip_tangent(v, c)
    assert (c ** 0.5 * clipped.norm(dim=-1) <= 1.0).all()  # F.2: √c‖v‖ ≤ 1 after clipping
    small = torch.randn(5, 8) * 0.01
    torch.testing.assert_close(clip_tangent(small, c), small)


@pytest.mark.parametrize("c", CURVATURES)
def test_clipped_expmap0_is_scale_clip_then_expmap0(c):
    """The fused radial form equals the three steps it replaces, from the origin to far past the
    clip radius, with a per-group scale, and has finite gradients at v = 0."""
    g = torch.Generator().manual_seed(0)
    radii = torch.tensor([0.0, 1e-30, 1e-6, 0.1, 1.0, 10.0, 1e4]).view(1, -1, 1)
    v = (torch.randn(3, 7, 16, generator=g) * radii).requires_grad_()  # (G, N, D)
    scale = torch.tensor([0.5, 1.0, 3.0]).view(3, 1, 1)
    ct = torch.tensor(c, requires_grad=True)
    fused = clipped_expmap0(v, ct, scale)
    torch.testing.assert_close(fused, expmap0(clip_tangent(v * scale, ct), ct), atol=1e-6, rtol=1e-5)
    assert fused.dtype == torch.float32 and clipped_expmap0(v.bfloat16(), ct, scale).dtype == torch.float32
    fused.sum().backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(ct.grad)
    torch.testing.assert_close(v.grad[:, 0], scale.view(3, 1).expand(3, 16))  # d exp_0(s v)/dv = s at the origin


def test_clipped_expmap0_dist0_is_the_points_distance_to_the_origin():
    """`with_dist0`: d(0, h) = 2 × the clipped tangent's norm equals `dist0` of the points, from the
    origin to far past the clip radius, and its gradient (alone and beside the points') gradchecks
    in both clip regimes, with a per-group scale."""
    radii = torch.tensor([0.0, 1e-6, 0.1, 1.0, 10.0, 1e4]).view(1, -1, 1)
    v = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(3)) * radii  # (G, N, D)
    scale = torch.tensor([0.5, 3.0]).view(2, 1, 1)
    points, d0 = clipped_expmap0(v, 1.5, scale, with_dist0=True)
    assert d0.shape == (2, 6)
    torch.testing.assert_close(points, clipped_expmap0(v, 1.5, scale))
    torch.testing.assert_close(d0, dist0(points, 1.5), atol=1e-6, rtol=1e-5)
    # gradcheck's finite differences need ‖v‖ ≫ their 1e-6 step: radii 0.1 (unclipped) to 1e4
    leaves = [t.double()[:, 2:].clone().requires_grad_() if t is v else t.double().clone().requires_grad_()
              for t in (v, torch.tensor(1.5), scale)]
    w = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert torch.autograd.gradcheck(lambda a, k, s: clipped_expmap0(a, k, s, with_dist0=True)[1] * w, leaves)
    assert torch.autograd.gradcheck(lambda a, k, s: clipped_expmap0(a, k, s, with_dist0=True), leaves)


def test_gradcheck_float64():
    c = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    x = (ref.ball_points(3, 4, 1.3, 0.8, seed=1)).requires_grad_()
    y = (ref.ball_points(3, 4, 1.3, 0.8, seed=2)).requires_grad_()
    M = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    for fn, args in [(dist, (x, y, c)), (dist0, (x, c)), (mobius_add, (x, y, c)), (logmap, (x, y, c)),
                     (expmap, (x, y, c)), (logmap0, (x, c)), (expmap0, (y, c)), (clipped_expmap0, (torch.cat([y * 10, y * 0.1]), c, torch.tensor([[0.5]] * 3 + [[2.0]] * 3, dtype=torch.float64, requires_grad=True))), (mobius_matvec, (M, x, c)),
                     (pairwise_dist, (x, y, c)), (mobius_affine, (M, x, ref.ball_points(1, 5, 1.3, 0.5, seed=3)[0].requires_grad_(), c))]:
        assert torch.autograd.gradcheck(fn, args), fn.__name__


def test_refined_pairwise_gradcheck_batched_broadcast_and_near_duplicates():
    """pairwise_dist's hand-written backward: broadcast batch dims, one curvature per batch element,
    two refined columns per row and near-duplicate pairs (the exact path's own gradient)."""
    x = ref.ball_points(6, 4, 2.0, 0.8, seed=11).view(2, 3, 4)
    y = torch.cat([x[:1, :2] + 1e-4, ref.ball_points(2, 4, 2.0, 0.8, seed=12).view(1, 2, 4)], dim=1)  # (1, 4, 4)
    c = torch.tensor([[[0.7]], [[2.0]]], dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, y, c)]
    assert torch.autograd.gradcheck(lambda a, b, k: pairwise_dist(a, b, k, refine=2), leaves)
    assert torch.autograd.gradcheck(lambda a, b, k: pairwise_dist(a, b, k, refine=0), leaves)


def test_gradient_at_origin_is_identity():
    # geoopt's logmap0 gradient at 0 is 0; the true Jacobian is the identity
    x = torch.zeros(4, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda t: logmap0(t, 1.5), x)
    torch.testing.assert_close(jac, torch.eye(4))
    jac = torch.autograd.functional.jacobian(lambda t: expmap0(t, 1.5), x)
    torch.testing.assert_close(jac, torch.eye(4))


@pytest.mark.parametrize("norm", [1e-21, 1e-20, 1e-12])
def test_gradients_finite_for_tiny_nonzero_vectors(norm):
    # float32 norms of 1e-22..1e-19 once made the projection's quotient backward inf · 0 = NaN
    c = torch.tensor(1.5, requires_grad=True)
    x = torch.full((2, 8), norm / 8 ** 0.5, requires_grad=True)
    for fn, args in [(project, (x, c)), (expmap0, (x, c)), (clipped_expmap0, (x, c, torch.ones(1))),
                     (mobius_affine, (torch.eye(8), x, torch.zeros(8), c))]:
        x.grad = c.grad = None
        fn(*args).sum().backward()
        assert x.grad.isfinite().all() and c.grad.isfinite(), fn.__name__


def test_points_inside_the_radius_give_the_curvature_no_gradient():
    # the projection is the identity inside; max_norm / max(norm, max_norm) once gave c rounding noise
    torch.manual_seed(0)
    for _ in range(50):
        c = (torch.rand(()) * 3 + 0.1).requires_grad_()
        project(torch.rand(16, 8) * 0.05, c).sum().backward()
        assert c.grad == 0


def test_precision_contract_under_bf16_autocast():
    c = torch.tensor(1.5)
    x = (torch.randn(16, 8) * 3).bfloat16().requires_grad_()
    y = (torch.randn(16, 8) * 3).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        px, py = expmap0(x, c), expmap0(y, c)
        # bf16 rounding can put points on the unit sphere: results must stay finite
        on_sphere = (px / px.norm(dim=-1, keepdim=True)).bfloat16() / c.sqrt()
        outs = [dist(px, py, c), pairwise_dist(px, py, c), logmap0(px, c), mobius_add(px, py, c),
                dist0(on_sphere, c), logmap(on_sphere, py, c)]
    for o in outs:
        assert o.dtype == torch.float32 and torch.isfinite(o).all()
    sum(o.sum() for o in outs).backward()
    assert torch.isfinite(x.grad.float()).all() and torch.isfinite(y.grad.float()).all()
    assert dist(x.double(), y.double(), 1.5).dtype == torch.float64


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="mobius_matvec"):
        mobius_matvec(torch.eye(3), torch.zeros(4), 1.0)
    with pytest.raises(ValueError, match="pairwise_dist"):
        pairwise_dist(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
