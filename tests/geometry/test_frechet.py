"""Gyro-midpoint and Fréchet mean: references, defining properties, gradients, batching."""
from __future__ import annotations

import geoopt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geometry import (clip_tangent, dist, dist0, expmap0, frechet_mean, frechet_weights, mobius_add,
                      weighted_midpoint, weighted_midpoints)

from geometry.frechet import PHI_SERIES, _phi
from geometry.poincare import BALL_EPS

from . import reference as ref


def _parts(c: float, batch: int = 16, parts: int = 4, dim: int = 32, seed: int = 0, scale: float = 1.0):
    """Points as HyperbolicProjection makes them: F.2-clipped tangents mapped by expmap0."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(batch, parts, dim, generator=g) * scale / dim ** 0.5 / c ** 0.5
    return expmap0(clip_tangent(v, c), c)


def test_lou_weight_phi_and_its_derivative_match_float64():
    """φ(δ) = asinh(√δ)/√(δ(1 + δ)), the Lou step's weight, and φ' in float32: series below
    PHI_SERIES, closed form above, both accurate across the switch and finite at δ = 0."""
    delta = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-10, 1.3, 4000, dtype=torch.float64),
                       PHI_SERIES + torch.linspace(-1e-3, 1e-3, 101, dtype=torch.float64)])
    r, q = delta.sqrt(), (1 + delta).sqrt()
    tiny = delta < 1e-4  # float64's own closed forms cancel there: their Taylor series instead
    truth = torch.where(tiny, 1 - 2 / 3 * delta + 8 / 15 * delta ** 2, torch.asinh(r) / (r * q))
    truth_d = torch.where(tiny, -2 / 3 + 16 / 15 * delta - 48 / 35 * delta ** 2,
                          (1 - truth * (1 + 2 * delta)) / (2 * delta * (1 + delta)))
    phi, d_phi = _phi(delta.float())
    assert phi[0] == 1 and d_phi[0] == pytest.approx(-2 / 3)
    assert ((phi.double() - truth).abs() / truth).max() < 1e-6
    assert ((d_phi.double() - truth_d).abs() / truth_d.abs()).max() < 1e-5


def _riemannian_grad_norm(mu: torch.Tensor, x: torch.Tensor, w: torch.Tensor, c: float) -> torch.Tensor:
    """‖grad_R F(μ)‖ = ‖∇F‖/λ_μ of F = Σ w d²(μ, x_i), evaluated in float64."""
    mu = mu.double().detach().requires_grad_()
    ref.frechet_variance(mu, x.double(), w.double(), c).sum().backward()
    return mu.grad.norm(dim=-1) / ref.lam(mu.detach(), c).squeeze(-1)


@pytest.mark.parametrize("c", [0.05, 1.5, 10.0])
def test_frechet_mean_zeroes_variance_gradient_in_float32(c):
    x = _parts(c, scale=1.0)
    w = torch.softmax(torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), -1)
    mu = frechet_mean(x, w, c, dim=1)
    assert mu.dtype == torch.float32 and mu.shape == (16, 32)
    # ‖grad F‖ is 2·Σ w d(μ, x_i) ~ 1/√c at the start; float32 leaves it at rounding level
    assert (_riemannian_grad_norm(mu, x, w, c) * c ** 0.5).max() < 1e-5
    start = weighted_midpoint(x, w, c, dim=1)  # the gyro-midpoint is *not* the Fréchet mean
    assert (_riemannian_grad_norm(start, x, w, c) * c ** 0.5).max() > 1e-3


def test_default_iterations_reach_float32_floor_on_hard_inputs():
    """FRECHET_ITERS Newton steps converge on clipped points at the clip radius, with skewed weights,
    spread and near-duplicate points, for small and large curvature."""
    g = torch.Generator().manual_seed(3)
    for c in (0.3, 1.5, 3.0):
        v = torch.randn(48, 4, 256, generator=g) * torch.empty(48, 4, 1).uniform_(0.01, 50, generator=g)
        v[:16] = v[:16, :1] + 0.01 * torch.randn(16, 4, 256, generator=g)  # near-duplicate parts
        x = expmap0(clip_tangent(v, c), c)
        w = torch.softmax(torch.randn(48, 4, generator=g) * torch.tensor([0.3, 3.0]).repeat(24)[:, None], -1)
        truth = frechet_mean(x.double(), w.double(), c, dim=1, iters=20)
        assert dist(frechet_mean(x, w, c, dim=1).double(), truth, c).max() < 6e-6


def test_frechet_mean_matches_karcher_flow_reference():
    c = 1.5
    x = _parts(c, batch=4, scale=0.8).double()
    w = torch.rand(4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    truth = ref.karcher_mean(x, w, c)
    ours = frechet_mean(x.float(), w.float(), c, dim=1).double()
    assert dist(ours, truth, c).max() < 1e-5


def test_one_hot_weights_give_the_point_and_two_points_the_geodesic_midpoint():
    c = 1.5
    x = _parts(c, batch=8, parts=4, scale=1.0)
    w = torch.zeros(8, 4)
    w[:, 2] = 1
    torch.testing.assert_close(frechet_mean(x, w, c, dim=1), x[:, 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(weighted_midpoint(x, w, c, dim=1), x[:, 2], atol=1e-5, rtol=0)
    a, b = x[:, 0], x[:, 1]
    mu = frechet_mean(torch.stack([a, b], 1), torch.ones(8, 2), c, dim=1)
    half = dist(a, b, c) / 2
    torch.testing.assert_close(dist(mu, a, c), half, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(dist(mu, b, c), half, atol=2e-5, rtol=1e-5)


def test_gradcheck_through_the_unrolled_mean():
    c = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    x = _parts(0.8, batch=2, parts=3, dim=4, scale=1.0).double().requires_grad_()
    w = torch.rand(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).add(0.1).requires_grad_()
    # enough steps that the unrolled derivative equals the implicit (converged) one
    assert torch.autograd.gradcheck(lambda x, w, c: frechet_mean(x, w, c, dim=1, iters=10), (x, w, c))
    assert torch.autograd.gradcheck(lambda x, w, c: weighted_midpoint(x, w, c, dim=1), (x, w, c))


def test_gradcheck_with_one_curvature_per_problem_and_broadcast_weights():
    """The implicit gradient's hand-written VJP sums each curvature term to c's own shape: one c per
    problem (points along dim 0, c (1, B, 1)) and weights broadcast over the batch."""
    x = _parts(0.8, batch=2, parts=3, dim=4, scale=1.0).double().transpose(0, 1).contiguous().requires_grad_()  # (N, B, D)
    c = torch.tensor([0.5, 2.0], dtype=torch.float64).view(1, 2, 1).requires_grad_()
    w = torch.tensor([[0.2], [1.0], [0.7]], dtype=torch.float64).requires_grad_()  # (N, 1): broadcast over B
    assert torch.autograd.gradcheck(lambda x, w, c: frechet_mean(x, w, c, dim=0, iters=8), (x, w, c))


def test_float32_gradients_agree_with_float64():
    c = 1.5
    x = _parts(c, batch=4, scale=1.0)
    w = torch.softmax(torch.randn(4, 4, generator=torch.Generator().manual_seed(4)), -1)
    probe = torch.randn(4, 32, generator=torch.Generator().manual_seed(5))
    grads = []
    for dtype in (torch.float32, torch.float64):
        xx = x.detach().to(dtype).clone().requires_grad_()
        (frechet_mean(xx, w.to(dtype), c, dim=1) * probe.to(dtype)).sum().backward()
        grads.append(xx.grad.double())
    torch.testing.assert_close(grads[0], grads[1], atol=2e-4, rtol=1e-3)


def test_batching_and_dim():
    c = 1.0
    x = _parts(c, batch=6, parts=4, dim=8)
    w = torch.rand(6, 4, generator=torch.Generator().manual_seed(6))
    by_batch = torch.stack([frechet_mean(x[i], w[i], c, dim=0) for i in range(6)])
    torch.testing.assert_close(frechet_mean(x, w, c, dim=1), by_batch, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(frechet_mean(x.transpose(0, 1), w.T, c, dim=0), by_batch, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(frechet_mean(x, w, c, dim=-2), by_batch, atol=1e-6, rtol=1e-5)
    uniform = frechet_mean(x, torch.ones(4), c, dim=1)  # weights broadcast
    torch.testing.assert_close(uniform, frechet_mean(x, torch.full((6, 4), 0.25), c, dim=1))
    with pytest.raises(ValueError, match="frechet_mean: dim=2"):
        frechet_mean(x, w, c, dim=2)
    with pytest.raises(ValueError, match="weighted_midpoint: dim=-1"):
        weighted_midpoint(x, w, c, dim=-1)


@settings(max_examples=20, deadline=None)
@given(c=st.sampled_from([0.05, 0.5, 1.5, 10.0]), seed=st.integers(0, 10_000),
       scale=st.sampled_from([1e-6, 0.3, 1.0]), shift=st.sampled_from([0.0, 0.5, 0.9]))
def test_mean_is_equivariant_under_isometries_and_weight_scale(c, seed, scale, shift):
    x = _parts(c, batch=2, parts=4, dim=6, seed=seed, scale=scale)
    w = torch.rand(2, 4, generator=torch.Generator().manual_seed(seed)) + 0.05
    mu = frechet_mean(x, w, c, dim=1)
    assert torch.isfinite(mu).all()
    torch.testing.assert_close(frechet_mean(x, 7 * w, c, dim=1), mu, atol=1e-6, rtol=1e-5)
    # left gyro-translation a ⊕ · is an isometry, so it commutes with the Fréchet mean
    a = torch.zeros(6)
    a[0] = shift / c ** 0.5
    moved = frechet_mean(mobius_add(a, x, c), w, c, dim=1)
    assert (dist(moved, mobius_add(a, mu, c), c) * c ** 0.5).max() < 1e-4


def test_midpoints_match_geoopt_and_the_matmul_form():
    c = 1.5
    x = _parts(c, batch=3, parts=5, dim=8).double()
    w = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    ball = geoopt.PoincareBall(c=c)
    torch.testing.assert_close(weighted_midpoint(x, w, c, dim=1), ball.weighted_midpoint(x, w, reducedim=[1]))
    # P weightings of the same L points: (B, P, L) × (B, L, D)
    weights = torch.rand(3, 2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    loop = torch.stack([weighted_midpoint(x, weights[:, p], c, dim=1) for p in range(2)], 1)
    torch.testing.assert_close(weighted_midpoints(weights, x, c), loop)
    zero = weighted_midpoints(torch.zeros(3, 2, 5, dtype=torch.float64), x, c)
    assert (zero == 0).all()  # no weight at all: the origin, not NaN


def test_weighted_midpoints_gradcheck_broadcast_curvature_and_projection():
    """weighted_midpoints' written-out backward: weights (2, P, L) against points (1, L, D) broadcast,
    one curvature per batch element, and a row whose midpoint sits past the projection radius
    (most weight on a point at 0.999/√c), so the projection's clamp binds there."""
    c = torch.tensor([[[0.7]], [[2.0]]], dtype=torch.float64)
    x = _parts(2.0, batch=1, parts=4, dim=3, scale=1.0).double()
    x[0, 0] = x[0, 0] / x[0, 0].norm() * 0.999 / 2.0 ** 0.5
    w = torch.rand(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) + 0.1
    w[:, 2] = torch.tensor([1.0, 1e-3, 1e-3, 1e-3], dtype=torch.float64)
    radius = weighted_midpoints(w, x, c)[1, 2].norm() * 2.0 ** 0.5
    assert abs(radius.item() - (1 - BALL_EPS)) < 1e-12  # on the projection radius: the clamp binds
    leaves = [t.clone().requires_grad_() for t in (w, x, c)]
    assert torch.autograd.gradcheck(weighted_midpoints, leaves)


def test_frechet_weights_are_eq4_softmax():
    c = 1.5
    x = _parts(c, batch=3, parts=4, dim=8)
    w = frechet_weights(x, c, dim=1, temperature=0.5)
    torch.testing.assert_close(w, torch.softmax(dist0(x, c) / 0.5, dim=1))
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="temperature"):
        frechet_weights(x, c, dim=1, temperature=0.0)
    # distances the caller already has are used as given, and must be one per point
    d0 = torch.rand(3, 4)
    torch.testing.assert_close(frechet_weights(x, c, dim=1, temperature=0.5, d0=d0), torch.softmax(d0 / 0.5, dim=1))
    with pytest.raises(ValueError, match=r"d0 \(3, 4, 1\) must be the points' shape"):
        frechet_weights(x, c, dim=1, d0=d0[..., None])


@settings(max_examples=60, deadline=None)
@given(c=st.sampled_from([0.1, 1.5, 10.0]), seed=st.integers(0, 10_000), edge=st.sampled_from([1e-7, 1e-6, 1e-4]),
       dim=st.sampled_from([2, 8, 64]), parts=st.sampled_from([2, 4, 7]), aligned=st.booleans())
def test_gradients_are_finite_for_points_at_the_edge_of_the_ball(c, seed, edge, dim, parts, aligned):
    """Raw float32 points within `edge` of the boundary (radius (1 − edge)/√c; signlab's own
    projections never go past 1 − 4e-3), in random or nearly one direction, with random weights
    (one of them zero): the mean and every gradient (points, weights, c) stay finite."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(3, parts, dim, generator=g, dtype=torch.float64)
    if aligned:  # nearly parallel points: the Lou step's A² − 4c‖b‖² cancels to rounding noise
        u = u[:, :1] + 1e-3 * u
    x = (u / u.norm(dim=-1, keepdim=True) * (1 - edge) / c ** 0.5).float().requires_grad_()
    w = torch.rand(3, parts, generator=g)
    w[:, 0] = 0.0
    w.requires_grad_()
    cc = torch.tensor(c, requires_grad=True)
    mu = frechet_mean(x, w, cc, dim=1)
    assert torch.isfinite(mu).all()
    (mu * torch.randn(mu.shape, generator=g)).sum().backward()
    for name, t in (("x", x), ("w", w), ("c", cc)):
        assert torch.isfinite(t.grad).all(), name
