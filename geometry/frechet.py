"""Weighted means in the Poincaré ball: gyro-midpoint (closed form) and Fréchet mean (Eq. 3).

Shapes: points x (..., D) with the points along `dim` (any dim but the last); weights w of
x.shape[:-1] (or broadcastable to it), non-negative, normalised or not (both means are
invariant to rescaling w).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .poincare import _gap, _gap_floor, _project, _safe_sqrt, _sqnorm, dist0, full_precision

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


@full_precision
def weighted_midpoints(w: Tensor, x: Tensor, c: Tensor) -> Tensor:
    """P weighted midpoints of the same L points at once, as two matmuls.

    w (..., P, L), x (..., L, D) → (..., P, D); the attention read-out (no P×L×D tensor).
    """
    if w.shape[-1] != x.shape[-2]:
        raise ValueError(f"weighted_midpoints: w {tuple(w.shape)} and x {tuple(x.shape)} disagree on L")
    x2 = _sqnorm(x)  # (..., L, 1)
    gap = _gap(x2, c)
    # fold the per-token λ_j into the weights: (w λ) @ x, never a scaled copy of the L × D tokens
    lam_w = w * (2 / gap).transpose(-1, -2)  # (..., P, L)
    den = (w @ ((1 + c * x2) / gap)).clamp_min(torch.finfo(x.dtype).tiny)  # (..., P, 1)
    return _klein_to_ball((lam_w @ x) / den, c)


# asinh(r)/r = Σ_n ASINHC[n]·δⁿ with δ = r² (Taylor coefficients of asinh). Below ASINHC_SERIES the
# five terms are exact to 7e-9 (the next one, 63/2816·δ⁵), under float32's half-ulp of 1, and they
# keep value and derivative finite as δ → 0, where asinh(r)/r's own backward overflows (~1/r²).
ASINHC = (1.0, -1 / 6, 3 / 40, -5 / 112, 35 / 1152)
ASINHC_SERIES = 0.05
# largest entry of J^(2^K) at which the Neumann series counts as converged: the Lou step contracts
# (~0.45 per step on clipped inputs, so J^32 ~ 1e-11); 1e-3 only rejects series that did not
NEUMANN_TOL = 1e-3


def _asinhc_sq(delta: Tensor, derivative: bool = False) -> tuple[Tensor, Tensor | None]:
    """a(δ) = asinh(√δ)/√δ for δ ≥ 0 (and a'(δ) if asked), smooth through δ = 0."""
    small = delta < ASINHC_SERIES
    ds = torch.where(small, delta, 0.0)  # each branch sees only inputs where it is finite
    dd = torch.where(small, ASINHC_SERIES, delta)
    r = dd.sqrt()
    direct = torch.asinh(r) / r
    series = (((ASINHC[4] * ds + ASINHC[3]) * ds + ASINHC[2]) * ds + ASINHC[1]) * ds + ASINHC[0]
    a = torch.where(small, series, direct)
    if not derivative:
        return a, None
    series_d = ((4 * ASINHC[4] * ds + 3 * ASINHC[3]) * ds + 2 * ASINHC[2]) * ds + ASINHC[1]
    direct_d = (torch.rsqrt(1 + dd) - direct) / (2 * dd)  # d/dδ asinh(√δ)/√δ, cancels only below the series bound
    return a, torch.where(small, series_d, direct_d)


def _lou_step(beta: Tensor, gram: Tensor, x2: Tensor, gap_x: Tensor, w_over_gap: Tensor, lorentz_x: Tensor,
              c: Tensor, jacobian: bool = False) -> tuple[Tensor, Tensor | None]:
    """One closed-form ball update of Lou et al. (2020) for curvature −c, on coefficients β of
    μ = Σ β_i x_i (so everything is a function of the N × N Gram matrix).

    α_i = w_i g(δ_i) / (1 − c‖x_i‖²) with g(y) = 2 arcosh(1 + 2y)/√(y² + y) = 4 asinhc(√y)/√(1 + y),
    then μ ← η b with b = Σ α_i x_i, i.e. β ← η α, and η = 2 / (A + √(A² − 4c‖b‖²)),
    A = Σ α_i (1 + c‖x_i‖²) (Lou's quadratic root, rationalised so it stays exact as b → 0).
    ηα is invariant to rescaling α, so g's constant 4 is dropped. g is smooth in δ, so the Gram
    form's cancellation in ‖x_i − μ‖² (μ near some x_i) only perturbs α by O(eps); μ itself is
    formed from the points directly at the end. Shapes: β, x2, gap_x, w_over_gap and
    lorentz_x = 1 + c‖x_i‖² (..., N, 1); the step-invariant ones are computed once by the caller.

    With `jacobian`, also J = ∂β_new/∂β (..., N, N), in closed form (the same clamps as the
    value: a clamped quantity has derivative 0), for the implicit gradient of `frechet_mean`.
    """
    tiny = torch.finfo(beta.dtype).tiny
    g_beta = gram @ beta  # (..., N, 1): ⟨x_i, μ⟩
    mu2 = (beta * g_beta).sum(-2, keepdim=True)  # (..., 1, 1): ‖μ‖²
    xmu2_raw = x2 - 2 * g_beta + mu2
    xmu2 = xmu2_raw.clamp_min(0)  # ‖x_i − μ‖², rounding can dip below 0
    gap_mu = _gap(mu2, c)
    delta = c * xmu2 / (gap_x * gap_mu)
    a, a_d = _asinhc_sq(delta, jacobian)
    inv_sqrt = torch.rsqrt(1 + delta)
    alpha = w_over_gap * a * inv_sqrt
    big_a = (alpha * lorentz_x).sum(-2, keepdim=True)
    g_alpha = gram @ alpha
    b2 = (alpha * g_alpha).sum(-2, keepdim=True)
    # A² > 4c‖b‖² strictly inside the ball (1 + c‖x‖² > 2√c‖x‖), but near the edge the difference
    # cancels to rounding noise, possibly ≤ 0: _safe_sqrt gives 0 with gradient 0 there, where
    # clamp_min(0).sqrt() has the backward 0 · ∞ = NaN
    radicand = big_a * big_a - 4 * c * b2
    root = _safe_sqrt(radicand)
    den_raw = big_a + root
    den = den_raw.clamp_min(tiny)  # 0 only when every weight is 0 (then α = 0 and β_new = 0)
    new = 2 * alpha / den
    if not jacobian:
        return new, None
    # forward-mode through the same chain; rows i (the output), columns j (∂/∂β_j)
    d_mu2 = 2 * g_beta.transpose(-1, -2)  # (..., 1, N): ∂‖μ‖²/∂β_j = 2⟨x_j, μ⟩
    d_xmu2 = (d_mu2 - 2 * gram) * (xmu2_raw > 0)  # (..., N, N)
    d_gap_mu = torch.where(1 - c * mu2 > _gap_floor(mu2), -c, 0.0) * d_mu2  # (..., 1, N)
    d_delta = (c / (gap_x * gap_mu)) * (d_xmu2 - xmu2 / gap_mu * d_gap_mu)
    d_phi = a_d * inv_sqrt - a * inv_sqrt / (2 * (1 + delta))  # d/dδ of asinhc(√δ)/√(1 + δ)
    d_alpha = (w_over_gap * d_phi) * d_delta  # (..., N, N)
    d_big_a = (lorentz_x * d_alpha).sum(-2, keepdim=True)  # (..., 1, N)
    d_b2 = 2 * (g_alpha * d_alpha).sum(-2, keepdim=True)
    d_root = torch.where(radicand > 0, (big_a * d_big_a - 2 * c * d_b2) / torch.where(radicand > 0, root, 1.0), 0.0)
    d_den = (d_big_a + d_root) * (den_raw > tiny)
    return new, 2 * d_alpha / den - new / den * d_den


def _newton_steps(beta: Tensor, gram: Tensor, x2: Tensor, gap_x: Tensor, w_over_gap: Tensor, lorentz_x: Tensor,
                  c: Tensor, steps: int) -> tuple[Tensor, Tensor | None]:
    """`steps` graph-free Newton steps on β = F(β) (F = `_lou_step`): β ← β + (I − J)⁻¹ (F(β) − β),
    with F's closed-form Jacobian J. Returns β and J at the last iterate (None for 0 steps), which
    the implicit gradient reuses. I − J has eigenvalues ≥ ~0.55 (F contracts), so the batched
    solve is well conditioned; where it still fails (singular, or non-finite within ~1e-6 of the
    edge, where float32 cannot resolve J) that problem takes the plain step F(β)."""
    eye = torch.eye(beta.shape[-2], dtype=beta.dtype, device=beta.device)
    jac = None
    for _ in range(steps):
        new, jac = _lou_step(beta, gram, x2, gap_x, w_over_gap, lorentz_x, c, jacobian=True)
        delta, info = torch.linalg.solve_ex(eye - jac, new - beta)
        ok = (info == 0).unsqueeze(-1).unsqueeze(-1) & delta.isfinite().all(-2, keepdim=True)
        beta = torch.where(ok, beta + delta, new)
    return beta, jac


class _ImplicitGradient(torch.autograd.Function):
    """Identity on the converged β* = F(β*) whose backward maps g to (I − J)⁻ᵀ g, J = ∂F/∂β at β*:
    placed after one last step F(β*, θ) taken with β* detached, the gradient reaching θ is the
    implicit-function one, g (I − J)⁻¹ ∂F/∂θ. (I − J)⁻¹ is summed as the Neumann series
    Σ_{k<2^K} Jᵏ by K squarings: matmuls only (no solve that could fail on a near-singular
    matrix), the same series the unrolled steps' backward sums term by term. Where it has not
    converged (‖J^(2^K)‖ ≥ NEUMANN_TOL, or anything non-finite: raw points within ~1e-6 of the
    edge, where float32 cannot resolve the step's Jacobian) the problem keeps g itself, the
    one-step gradient ∂F/∂θ, which is finite."""

    @staticmethod
    def forward(beta: Tensor, jac: Tensor, squarings: int) -> Tensor:
        return beta.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[1])
        ctx.squarings = inputs[2]

    @staticmethod
    def backward(ctx, grad: Tensor):
        (power,) = ctx.saved_tensors
        power = power.transpose(-1, -2)
        total = grad
        for _ in range(ctx.squarings):  # (I + Jᵀ)(I + J²ᵀ)(I + J⁴ᵀ)… g
            total = total + power @ total
            power = power @ power
        converged = (power.abs().amax((-2, -1), keepdim=True) < NEUMANN_TOL) & total.isfinite().all(-2, keepdim=True)
        return torch.where(converged, total, grad), None, None


@full_precision
def frechet_mean(x: Tensor, w: Tensor, c: Tensor, dim: int, iters: int = FRECHET_ITERS) -> Tensor:
    """Weighted Fréchet mean argmin_μ Σ w_i d²(μ, x_i) (supplement Eq. 3), over `dim`.

    Starts at the gyro-midpoint and takes `iters` Newton steps on the closed-form Lou et al. update.
    Geodesics of the ball through the points stay in their linear span, so the steps run on N
    coefficients against the N × N Gram matrix: O(N²) per step instead of O(N·D). No convergence
    test on the host, batched over all other dims. The gradient is the implicit one of the
    converged mean (see `_ImplicitGradient`): one step with a graph instead of backpropagating
    through every step (which gave the same to ~1e-6, at many times the autograd work).
    """
    d = _point_dim(x, dim, "frechet_mean")
    if iters < 0:
        raise ValueError(f"frechet_mean: iters must be >= 0, got {iters}")
    if c.ndim == x.ndim:  # per-point curvature layout (..., N, ..., 1): follow the point axis
        c = c.movedim(d, -2)
    w = torch.broadcast_to(w, x.shape[:-1]).movedim(d, -1).unsqueeze(-1)  # (..., N, 1)
    x = x.movedim(d, -2)  # (..., N, D)
    x2 = _sqnorm(x)  # (..., N, 1)
    gram = x @ x.transpose(-1, -2)  # (..., N, N)
    # gyro-midpoint start (see _midpoint): coefficients λ_i w_i / Σ w γ, then Klein → ball
    gap = _gap(x2, c)
    lorentz_x = 1 + c * x2
    beta = w * 2 / gap / (w * lorentz_x / gap).sum(-2, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    m2 = (beta * (gram @ beta)).sum(-2, keepdim=True).clamp_min(0)
    beta = beta / (1 + _safe_sqrt(1 - c * m2))
    w_over_gap = w / gap
    steps = (beta, gram, x2, gap, w_over_gap, lorentz_x, c)
    if iters == 0:
        pass
    elif not (torch.is_grad_enabled() and any(t.requires_grad for t in steps)):
        beta, _ = _newton_steps(*steps, iters)  # static count: unrolled by torch.compile
    else:
        # The Newton steps carry no graph; one more plain step runs on their detached β*, so its
        # backward gives ∂F/∂θ, and _ImplicitGradient supplies (I − J)⁻¹ with the last Newton
        # step's J: the derivative of the converged mean, whose value the extra step leaves alone.
        with torch.no_grad():
            fixed = [t.detach() for t in steps]
            fixed[0], jac = _newton_steps(*fixed, iters)
        beta, _ = _lou_step(fixed[0], gram, x2, gap, w_over_gap, lorentz_x, c)
        beta = _ImplicitGradient.apply(beta, jac, NEUMANN_SQUARINGS)
    return _project((beta * x).sum(-2), c.squeeze(-2) if c.ndim >= 2 else c)


@full_precision
def frechet_weights(points: Tensor, c: Tensor, dim: int, temperature: float = 1.0) -> Tensor:
    """Eq. 4 weights w_p = softmax_p(d(0, h_p) / λ_w) over the point axis `dim`: (...,)."""
    d = _point_dim(points, dim, "frechet_weights")
    if temperature <= 0:
        raise ValueError(f"frechet_weights: temperature λ_w must be > 0, got {temperature}")
    return torch.softmax(dist0(points, c) / temperature, dim=d)
