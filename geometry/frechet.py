"""Weighted means in the Poincaré ball: gyro-midpoint (closed form) and Fréchet mean (Eq. 3).

Shapes: points x (..., D) with the points along `dim` (any dim but the last); weights w of
x.shape[:-1] (or broadcastable to it), non-negative, normalised or not (both means are
invariant to rescaling w).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .poincare import (BALL_EPS, _fit_terms, _gap, _gap_floor, _matmul, _norm, _project, _safe_sqrt, _sqnorm, dist0,
                       full_precision)

# Newton steps on the Lou et al. fixed point, from the gyro-midpoint. The plain step contracts by
# ~0.45 on F.2-clipped inputs (√c·d(0, x) ≤ 2) and needs 16 steps to reach float32's floor (~3e-6
# to a float64 reference); Newton converges quadratically and reaches it in 2, even for skewed
# weights and near-duplicate points (worst 2.9e-6 on the tests' hard inputs; one step leaves 5e-3)
FRECHET_ITERS = 2
# Neumann terms of (I − J)⁻¹ in the implicit gradient: 2^5 = 32, J^32 ~ 1e-11 at the ~0.45 contraction
NEUMANN_SQUARINGS = 5


def _point_dim(x: Tensor, dim: int, fn: str) -> int:
    """Normalise `dim` (which indexes x's point axis, never the feature axis)."""
    d = dim % x.ndim if -x.ndim <= dim < x.ndim else None
    if d is None or d == x.ndim - 1:
        raise ValueError(f"{fn}: dim={dim} must index a point axis of x {tuple(x.shape)}, not the last (feature) axis")
    return d


def _klein_to_ball(m: Tensor, c: Tensor) -> Tensor:
    """Klein-model point m → Poincaré ball m / (1 + √(1 − c‖m‖²))."""
    return _project(m / (1 + _safe_sqrt(1 - c * _sqnorm(m))), c)


def _midpoint_terms(x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """λ_x x and the Lorentz factor λ_x − 1 = (1 + c‖x‖²)/(1 − c‖x‖²), from Poincaré coordinates
    (avoids the 1 − c‖x_K‖² cancellation of going through Klein coordinates)."""
    x2 = _sqnorm(x)
    gap = _gap(x2, c)
    return 2 * x / gap, (1 + c * x2) / gap  # (..., D), (..., 1)


def _midpoint(x: Tensor, w: Tensor, c: Tensor, d: int) -> Tensor:
    lam_x, gamma = _midpoint_terms(x, c)
    w = w.unsqueeze(-1)  # (..., 1)
    den = (w * gamma).sum(d).clamp_min(torch.finfo(x.dtype).tiny)  # only 0 when every weight is 0
    return _klein_to_ball((w * lam_x).sum(d) / den, c)


@full_precision
def weighted_midpoint(x: Tensor, w: Tensor, c: Tensor, dim: int) -> Tensor:
    """Einstein (gyro-)midpoint ½ ⊗ (Σ w λ x / Σ w (λ − 1)) over `dim`; equals geoopt's
    `weighted_midpoint`. Zero total weight gives the origin."""
    return _midpoint(x, w, c, _point_dim(x, dim, "weighted_midpoint"))


class _WeightedMidpoints(torch.autograd.Function):
    """`weighted_midpoints` with its backward written out: the per-token factors λ_j = 2/(1 − c‖x_j‖²)
    and γ_j = (1 + c‖x_j‖²)/(1 − c‖x_j‖²), two matmuls for the Klein point m = (w λ) x / (w γ),
    then the per-row map to the ball m / (1 + √(1 − c‖m‖²)) and its projection (one log-derivative,
    as in `_Expmap0`), reversed by hand: autograd recorded about 40 ops and dispatched about 110 in
    backward for the token attention's read-out, this backward 56. Every clamp has its forward's
    derivative (0 where it binds), as under autograd (`tests/geometry/test_frechet.py` gradchecks
    it with broadcast batches, one curvature per batch element and a binding projection)."""

    @staticmethod
    def forward(ctx, w: Tensor, x: Tensor, c: Tensor) -> Tensor:
        tiny = torch.finfo(x.dtype).tiny
        x2 = _sqnorm(x)  # (..., L, 1)
        gap = _gap(x2, c)
        lam = 2 / gap
        lorentz = (1 + c * x2) / gap
        # fold the per-token λ_j into the weights: (w λ) @ x, never a scaled copy of the L × D tokens
        lam_w = w * lam.transpose(-1, -2)  # (..., P, L)
        den_raw = _matmul(w, lorentz)  # (..., P, 1)
        den = den_raw.clamp_min(tiny)  # only 0 when every weight is 0 (then m = 0, the origin)
        m = _matmul(lam_w, x) / den  # (..., P, D) Klein point
        m_norm = _norm(m)
        m2 = m_norm * m_norm
        # 1 − c‖m‖² > 0 inside the ball; rounding can take it to 0 at the edge
        root = (1 - c * m2).clamp_min(0).sqrt()
        k = (1 + root).reciprocal()  # Klein → Poincaré factor
        max_norm = (1 - BALL_EPS) / c.sqrt()
        fit, fit_on = _fit_terms(k * m_norm, max_norm)  # the projection (it binds wherever root is 0)
        factor = k * fit
        ctx.save_for_backward(w, x, c, x2, gap, lam, lorentz, lam_w, den, m, m2, root, factor)
        ctx.masks = (den_raw >= tiny, fit_on)
        return m * factor

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        w, x, c, x2, gap, lam, lorentz, lam_w, den, m, m2, root, factor = ctx.saved_tensors
        den_ok, fit_on = ctx.masks

        # out = m·f, f = fit/(1 + √(1 − c‖m‖²)) a function of c‖m‖² alone, except the projection's
        # max_norm ∝ c^(−1/2): ∂ln f/∂ln‖m‖² = ∂ln f/∂ln c = (1 − root)/(2 root), or −1/2 where
        # it binds
        big_g = (g * m).sum(-1, keepdim=True) * factor  # ⟨g, out⟩
        e = torch.where(fit_on, -0.5, (1 - root) / (root + root))
        g_ln_m2 = big_g * e
        # finite at m = 0: G = 0 there (the clamp only avoids 0/0)
        g_m = torch.addcmul(g * factor, 2 * g_ln_m2 / m2.clamp_min(torch.finfo(m.dtype).tiny), m)
        # m = (λw) x / den, den = w γ past its clamp
        g_num = g_m / den
        g_den = -(g_m * m).sum(-1, keepdim=True) / den * den_ok  # (..., P, 1)
        g_lam_w = _matmul(g_num, x.transpose(-1, -2))  # (..., P, L)
        g_x = _matmul(lam_w.transpose(-1, -2), g_num)  # (..., L, D)
        g_w = g_lam_w * lam.transpose(-1, -2) + g_den * lorentz.transpose(-1, -2)
        g_lam = (g_lam_w * w).sum_to_size(lam.transpose(-1, -2).shape).transpose(-1, -2)  # (..., L, 1)
        g_lorentz = _matmul(w.transpose(-1, -2), g_den).sum_to_size(lorentz.shape)
        # λ = 2/gap, γ = (1 + c‖x‖²)/gap, gap = 1 − c‖x‖² past its floor
        g_gap = -(g_lam * lam + g_lorentz * lorentz) / gap * (gap > _gap_floor(gap))
        g_x = g_x + 2 * (c * (g_lorentz / gap - g_gap)) * x
        grad_c = None
        if ctx.needs_input_grad[2]:
            # each term summed on its own: they broadcast differently
            grad_c = (g_ln_m2 / c).sum_to_size(c.shape) + (x2 * (g_lorentz / gap - g_gap)).sum_to_size(c.shape)
        return g_w.sum_to_size(w.shape), g_x.sum_to_size(x.shape), grad_c


@full_precision
def weighted_midpoints(w: Tensor, x: Tensor, c: Tensor) -> Tensor:
    """P weighted midpoints of the same L points at once, as two matmuls.

    w (..., P, L), x (..., L, D) → (..., P, D); the attention read-out (no P×L×D tensor). The
    backward is written out (`_WeightedMidpoints`).
    """
    if w.shape[-1] != x.shape[-2]:
        raise ValueError(f"weighted_midpoints: w {tuple(w.shape)} and x {tuple(x.shape)} disagree on L")
    return _WeightedMidpoints.apply(w, x, c)


# φ(δ) = asinh(√δ)/√(δ(1 + δ)) = ₂F₁(1, 1; 3/2; −δ) = Σ_n PHI[n]·δⁿ, PHI[n] = (−4)ⁿ(n!)²/(2n + 1)!.
# Below PHI_SERIES five terms of φ are exact to 9e-9 (the next, 256/693·δ⁵) and five of φ' to 8e-8
# (the next, 6·1024/3003·δ⁵), about float32's half-ulp, and both stay finite as δ → 0, where the
# closed form is 0/0. Just above it the closed-form φ' cancels to ≤ 5e-6 relative error (float32,
# measured against float64), which only moves Newton's Jacobian and the implicit gradient as much.
PHI = (1.0, -2 / 3, 8 / 15, -16 / 35, 128 / 315, -256 / 693)
PHI_SERIES = 0.03
# largest entry of J^(2^K) at which the Neumann series counts as converged: the Lou step contracts
# (~0.45 per step on clipped inputs, so J^32 ~ 1e-11); 1e-3 only rejects series that did not
NEUMANN_TOL = 1e-3


def _phi(delta: Tensor) -> tuple[Tensor, Tensor]:
    """φ(δ) = asinh(√δ)/√(δ(1 + δ)) and φ'(δ) = (1 − φ·(1 + 2δ)) / (2δ(1 + δ)) for δ ≥ 0, each
    from its series below PHI_SERIES and its closed form above."""
    small = delta < PHI_SERIES
    ds = delta.clamp_max(PHI_SERIES)  # each branch sees only inputs where it is accurate
    dd = delta.clamp_min(PHI_SERIES)
    one_dd = 1 + dd
    dd_one_dd = dd * one_dd
    direct = torch.asinh(dd.sqrt()) * torch.rsqrt(dd_one_dd)
    direct_d = (1 - direct * (one_dd + dd)) / (dd_one_dd + dd_one_dd)
    series = (((PHI[4] * ds + PHI[3]) * ds + PHI[2]) * ds + PHI[1]) * ds + PHI[0]
    series_d = (((5 * PHI[5] * ds + 4 * PHI[4]) * ds + 3 * PHI[3]) * ds + 2 * PHI[2]) * ds + PHI[1]
    return torch.where(small, series, direct), torch.where(small, series_d, direct_d)


class _LouTerms(NamedTuple):
    """One Lou step's intermediates, which its Jacobian (`_lou_jacobian`) and its vector-Jacobian
    product (`_lou_vjp`) reuse. Shapes: per point (..., N, 1), per problem (..., 1, 1) (per point
    wherever c is)."""
    new: Tensor  # β_new
    g_beta: Tensor  # ⟨x_i, μ⟩ = (G β)_i
    mu2: Tensor  # ‖μ‖²
    xmu2_raw: Tensor  # ‖x_i − μ‖² in the Gram form, before its clamp at 0
    gap_mu: Tensor  # 1 − c‖μ‖², floored
    delta: Tensor  # δ_i = c‖x_i − μ‖² / ((1 − c‖x_i‖²)(1 − c‖μ‖²))
    phi: Tensor  # φ(δ) = asinh(√δ)/√(δ(1 + δ))
    d_phi: Tensor  # φ'(δ)
    alpha: Tensor
    big_a: Tensor  # A = Σ α_i (1 + c‖x_i‖²)
    g_alpha: Tensor  # G α
    b2: Tensor  # ‖b‖² = αᵀ G α
    radicand: Tensor  # A² − 4c‖b‖²
    root: Tensor
    den_raw: Tensor  # A + √(A² − 4c‖b‖²)
    den: Tensor


def _lou_terms(beta: Tensor, gram: Tensor, x2: Tensor, gap_x: Tensor, w_over_gap: Tensor, lorentz_x: Tensor,
               c: Tensor) -> _LouTerms:
    """One closed-form ball update of Lou et al. (2020) for curvature −c, on coefficients β of
    μ = Σ β_i x_i (so everything is a function of the N × N Gram matrix).

    α_i = w_i g(δ_i) / (1 − c‖x_i‖²) with g(y) = 2 arcosh(1 + 2y)/√(y² + y) = 4φ(y) (`_phi`),
    then μ ← η b with b = Σ α_i x_i, i.e. β ← η α, and η = 2 / (A + √(A² − 4c‖b‖²)),
    A = Σ α_i (1 + c‖x_i‖²) (Lou's quadratic root, rationalised so it stays exact as b → 0).
    ηα is invariant to rescaling α, so g's constant 4 is dropped. g is smooth in δ, so the Gram
    form's cancellation in ‖x_i − μ‖² (μ near some x_i) only perturbs α by O(eps); μ itself is
    formed from the points directly at the end. Shapes: β, x2, gap_x, w_over_gap and
    lorentz_x = 1 + c‖x_i‖² (..., N, 1); the step-invariant ones are computed once (`_problem`).

    Runs without autograd only (the Newton steps, `_ImplicitFrechet`'s forward), so its clamps
    need no gradient-safe forms: its derivatives are written out, with a clamped quantity's
    derivative 0 as autograd would give it.
    """
    g_beta = _matmul(gram, beta)  # (..., N, 1): ⟨x_i, μ⟩
    mu2 = (beta * g_beta).sum(-2, keepdim=True)  # (..., 1, 1): ‖μ‖²
    xmu2_raw = x2 - 2 * g_beta + mu2  # rounding can dip below 0
    gap_mu = _gap(mu2, c)
    delta = c * xmu2_raw.clamp_min(0) / (gap_x * gap_mu)
    phi, d_phi = _phi(delta)
    alpha = w_over_gap * phi
    big_a = (alpha * lorentz_x).sum(-2, keepdim=True)
    g_alpha = _matmul(gram, alpha)
    b2 = (alpha * g_alpha).sum(-2, keepdim=True)
    # A² > 4c‖b‖² strictly inside the ball (1 + c‖x‖² > 2√c‖x‖), but near the edge the difference
    # cancels to rounding noise, possibly ≤ 0: the root is 0 there, and so is its derivative below
    radicand = big_a * big_a - 4 * c * b2
    root = radicand.clamp_min(0).sqrt()
    den_raw = big_a + root
    den = den_raw.clamp_min(torch.finfo(beta.dtype).tiny)  # 0 only when every weight is 0 (then α = 0 and β_new = 0)
    return _LouTerms(2 * alpha / den, g_beta, mu2, xmu2_raw, gap_mu, delta, phi, d_phi, alpha, big_a, g_alpha, b2,
                     radicand, root, den_raw, den)


def _lou_jacobian(t: _LouTerms, gram: Tensor, gap_x: Tensor, w_over_gap: Tensor, lorentz_x: Tensor,
                  c: Tensor) -> Tensor:
    """J = ∂β_new/∂β (..., N, N) of the step `t`, forward mode through the same chain; rows i
    (the output), columns j (∂/∂β_j)."""
    d_mu2 = 2 * t.g_beta.transpose(-1, -2)  # (..., 1, N): ∂‖μ‖²/∂β_j = 2⟨x_j, μ⟩
    d_xmu2 = (d_mu2 - 2 * gram) * (t.xmu2_raw > 0)  # (..., N, N)
    # gap_μ = 1 − c‖μ‖² past its floor (a floored gap equals the floor, an unfloored one exceeds it)
    d_delta = c / (gap_x * t.gap_mu) * d_xmu2 + (c * t.delta / t.gap_mu * (t.gap_mu > _gap_floor(t.mu2))) * d_mu2
    d_alpha = (w_over_gap * t.d_phi) * d_delta  # (..., N, N)
    d_big_a = (lorentz_x * d_alpha).sum(-2, keepdim=True)  # (..., 1, N)
    d_b2 = 2 * (t.g_alpha * d_alpha).sum(-2, keepdim=True)
    pos = t.radicand > 0
    d_root = torch.where(pos, (t.big_a * d_big_a - 2 * c * d_b2) / torch.where(pos, t.root, 1.0), 0.0)
    d_den = (d_big_a + d_root) * (t.den_raw > torch.finfo(t.den.dtype).tiny)
    return 2 * d_alpha / t.den - t.new / t.den * d_den


def _lou_vjp(t: _LouTerms, v: Tensor, beta: Tensor, x: Tensor, gram: Tensor, x2: Tensor, gap_x: Tensor,
             w_over_gap: Tensor, lorentz_x: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """v ↦ (∂β_new/∂x)ᵀ v, (∂β_new/∂w)ᵀ v, (∂β_new/∂c)ᵀ v for the step `t` taken at the fixed β:
    reverse mode through `_lou_terms` and the step-invariant terms of `_problem`.
    Each reduction sums to the shape its forward broadcast from (`sum_to_size`), so per-problem
    and per-point curvature layouts both come out right; ∂/∂w has w's (..., N, 1) shape."""
    floor = _gap_floor(x2)

    def to_c(term: Tensor) -> Tensor:  # each term of ∂/∂c summed on its own: they broadcast differently
        return term.sum_to_size(c.shape)

    # β_new = 2α/den, den = A + √(A² − 4c‖b‖²) (past its clamp)
    g_alpha = 2 * v / t.den
    g_den = (-v * t.new / t.den).sum_to_size(t.den.shape) * (t.den_raw > torch.finfo(t.den.dtype).tiny)
    pos = t.radicand > 0
    g_rad = torch.where(pos, g_den / (2 * torch.where(pos, t.root, 1.0)), 0.0)
    g_big_a = (g_den + 2 * t.big_a * g_rad).sum_to_size(t.big_a.shape)
    g_b2 = (-4 * c * g_rad).sum_to_size(t.b2.shape)
    g_c = to_c(-4 * t.b2 * g_rad)
    # ‖b‖² = αᵀGα, A = Σ α (1 + c‖x‖²), α = (w / gap_x) φ(δ)
    g_alpha = g_alpha + 2 * g_b2 * t.g_alpha + g_big_a * lorentz_x
    g_lorentz = g_big_a * t.alpha
    g_w_over_gap = g_alpha * t.phi
    g_delta = g_alpha * w_over_gap * t.d_phi
    # δ = c‖x − μ‖² / (gap_x gap_μ)
    k = g_delta * t.delta
    g_xmu2 = g_delta * c / (gap_x * t.gap_mu) * (t.xmu2_raw > 0)
    g_c = g_c + to_c(k / c)
    g_gap_mu = (-k / t.gap_mu).sum_to_size(t.gap_mu.shape) * (t.gap_mu > _gap_floor(t.mu2))  # past its floor
    g_c = g_c - to_c(t.mu2 * g_gap_mu)
    # ‖x_i − μ‖² = ‖x_i‖² − 2(Gβ)_i + βᵀGβ, β fixed
    g_mu2 = g_xmu2.sum_to_size(t.mu2.shape) - (c * g_gap_mu).sum_to_size(t.mu2.shape)
    u = g_mu2 * beta - 2 * g_xmu2  # ∂/∂G = u βᵀ (+ ‖b‖²'s term)
    # the step-invariant terms: w / gap_x, 1 + c‖x‖², gap_x = 1 − c‖x‖² (past its floor)
    g_gap_x = -(k + g_w_over_gap * w_over_gap) / gap_x * (gap_x > floor)
    g_x2 = g_xmu2 + c * (g_lorentz - g_gap_x)
    g_c = g_c + to_c(x2 * (g_lorentz - g_gap_x))
    # G = x xᵀ, x2 = ‖x‖²
    g_gram = g_b2 * t.alpha * t.alpha.transpose(-1, -2) + u * beta.transpose(-1, -2)
    g_x = _matmul(g_gram + g_gram.transpose(-1, -2), x) + 2 * g_x2 * x
    return g_x, g_w_over_gap / gap_x, g_c


def _problem(x: Tensor, w: Tensor, c: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The gyro-midpoint's coefficients β (the start, see `_midpoint`: λ_i w_i / Σ w γ, then
    Klein → ball) and the step-invariant terms (gram, x2, gap_x, w_over_gap, lorentz_x, c) of
    x (..., N, D), w (..., N, 1)."""
    x2 = _sqnorm(x)  # (..., N, 1)
    gram = _matmul(x, x.transpose(-1, -2))  # (..., N, N)
    gap = _gap(x2, c)
    lorentz_x = 1 + c * x2
    w_over_gap = w / gap
    beta = 2 * w_over_gap / (w_over_gap * lorentz_x).sum(-2, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    m2 = (beta * _matmul(gram, beta)).sum(-2, keepdim=True).clamp_min(0)
    return beta / (1 + _safe_sqrt(1 - c * m2)), (gram, x2, gap, w_over_gap, lorentz_x, c)


def _all_finite(t: Tensor) -> Tensor:
    """Whether each column of t (..., N, 1) is finite: x − x is 0 only for finite x, two ops
    where isfinite takes four."""
    return (t - t == 0).all(-2, keepdim=True)


def _newton_steps(beta: Tensor, gram: Tensor, x2: Tensor, gap_x: Tensor, w_over_gap: Tensor, lorentz_x: Tensor,
                  c: Tensor, steps: int) -> tuple[Tensor, Tensor | None]:
    """`steps` graph-free Newton steps on β = F(β) (F = the Lou step): β ← β + (I − J)⁻¹ (F(β) − β),
    with F's closed-form Jacobian J. Returns β and J at the last iterate (None for 0 steps), which
    the implicit gradient reuses. I − J has eigenvalues ≥ ~0.55 (F contracts), so the batched
    solve is well conditioned; where it still fails (singular, or non-finite within ~1e-6 of the
    edge, where float32 cannot resolve J) that problem takes the plain step F(β)."""
    eye = torch.eye(beta.shape[-2], dtype=beta.dtype, device=beta.device)
    jac = None
    for _ in range(steps):
        t = _lou_terms(beta, gram, x2, gap_x, w_over_gap, lorentz_x, c)
        jac = _lou_jacobian(t, gram, gap_x, w_over_gap, lorentz_x, c)
        delta, _ = torch.linalg.solve_ex(eye - jac, t.new - beta)
        # a singular I − J leaves a zero pivot, hence inf or NaN, in the solution: no need for `info`
        beta = torch.where(_all_finite(delta), beta + delta, t.new)
    return beta, jac


def _neumann_solve(jac: Tensor, g: Tensor, squarings: int) -> Tensor:
    """(I − Jᵀ)⁻¹ g summed as the Neumann series Σ_{k<2^K} (Jᵀ)ᵏ g by K squarings: matmuls only
    (no solve that could fail on a near-singular matrix), the same series the unrolled steps'
    backward sums term by term. Where it has not converged (‖J^(2^K)‖ ≥ NEUMANN_TOL, or anything
    non-finite: raw points within ~1e-6 of the edge, where float32 cannot resolve the step's
    Jacobian) the problem keeps g itself, the one-step gradient, which is finite."""
    n = jac.shape[-1]
    power = jac.transpose(-1, -2).reshape(-1, n, n)  # one flat batch: bmm, no broadcasting matmul per product
    flat = total = g.reshape(-1, n, 1)
    for _ in range(squarings):  # (I + Jᵀ)(I + J²ᵀ)(I + J⁴ᵀ)… g
        total = torch.baddbmm(total, power, total)
        power = torch.bmm(power, power)
    converged = (power.abs().amax((-2, -1), keepdim=True) < NEUMANN_TOL) & _all_finite(total)
    return torch.where(converged, total, flat).view(g.shape)


class _ImplicitFrechet(torch.autograd.Function):
    """The converged coefficients β* = F(β*; x, w, c) (`iters` Newton steps, then one plain step)
    with the implicit-function gradient: g ↦ (∂F/∂θ)ᵀ (I − J)⁻ᵀ g, J = ∂F/∂β from the last Newton
    step, (I − J)⁻ᵀ by `_neumann_solve` and (∂F/∂θ)ᵀ by `_lou_vjp`, both written out. Autograd
    through one recorded step gave the same gradient with about 110 more recorded ops and 120 more
    dispatched ones at the demo's shapes (B × 4 parts), where each op's fixed cost is the whole cost."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, c: Tensor, iters: int) -> Tensor:
        beta, problem = _problem(x, w, c)
        beta, jac = _newton_steps(beta, *problem, iters)
        t = _lou_terms(beta, *problem)
        ctx.save_for_backward(x, w, c, beta, jac, *problem[:-1], *t)
        return t.new

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, w, c, beta, jac, gram, x2, gap_x, w_over_gap, lorentz_x, *terms = ctx.saved_tensors
        v = _neumann_solve(jac, grad, NEUMANN_SQUARINGS)
        g_x, g_w, g_c = _lou_vjp(_LouTerms(*terms), v, beta, x, gram, x2, gap_x, w_over_gap, lorentz_x, c)
        return g_x, g_w.sum_to_size(w.shape), g_c, None


@full_precision
def frechet_mean(x: Tensor, w: Tensor, c: Tensor, dim: int, iters: int = FRECHET_ITERS) -> Tensor:
    """Weighted Fréchet mean argmin_μ Σ w_i d²(μ, x_i) (supplement Eq. 3), over `dim`.

    Starts at the gyro-midpoint and takes `iters` Newton steps on the closed-form Lou et al. update.
    Geodesics of the ball through the points stay in their linear span, so the steps run on N
    coefficients against the N × N Gram matrix: O(N²) per step instead of O(N·D). No convergence
    test on the host, batched over all other dims. The gradient is the implicit one of the
    converged mean (`_ImplicitFrechet`), not a backward pass through every step (which gave the
    same to ~1e-6, at many times the work).
    """
    d = _point_dim(x, dim, "frechet_mean")
    if iters < 0:
        raise ValueError(f"frechet_mean: iters must be >= 0, got {iters}")
    if c.ndim == x.ndim:  # per-point curvature layout (..., N, ..., 1): follow the point axis
        c = c.movedim(d, -2)
    w = torch.broadcast_to(w, x.shape[:-1]).movedim(d, -1).unsqueeze(-1)  # (..., N, 1)
    x = x.movedim(d, -2)  # (..., N, D)
    if iters > 0 and torch.is_grad_enabled() and any(t.requires_grad for t in (x, w, c)):
        beta = _ImplicitFrechet.apply(x, w, c, iters)
    else:  # no graph to record (0 steps: the gyro-midpoint, differentiable as written)
        beta, problem = _problem(x, w, c)
        if iters:
            beta, _ = _newton_steps(beta, *problem, iters)  # static count: unrolled by torch.compile
    return _project((beta * x).sum(-2), c.squeeze(-2) if c.ndim >= 2 else c)


@full_precision
def frechet_weights(points: Tensor, c: Tensor, dim: int, temperature: float = 1.0,
                    d0: Tensor | None = None) -> Tensor:
    """Eq. 4 weights w_p = softmax_p(d(0, h_p) / λ_w) over the point axis `dim`: (...,).

    `d0`: the points' d(0, h_p) (points.shape[:-1]) when the caller already has them exactly (the
    pooled branch's projection does), instead of `dist0`'s artanh and its backward."""
    d = _point_dim(points, dim, "frechet_weights")
    if temperature <= 0:
        raise ValueError(f"frechet_weights: temperature λ_w must be > 0, got {temperature}")
    if d0 is None:
        d0 = dist0(points, c)
    elif d0.shape != points.shape[:-1]:
        raise ValueError(f"frechet_weights: d0 {tuple(d0.shape)} must be the points' shape without the feature "
                         f"axis, {tuple(points.shape[:-1])}")
    return torch.softmax(d0 / temperature, dim=d)
