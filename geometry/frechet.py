"""Weighted means in the Poincaré ball: gyro-midpoint (closed form) and Fréchet mean (Eq. 3).

Shapes: points x (..., D) with the points along `dim` (any dim but the last); weights w of
x.shape[:-1] (or broadcastable to it), non-negative, normalised or not (both means are
invariant to rescaling w).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .poincare import _gap, _project, _safe_sqrt, _sqnorm, dist0, full_precision

# Fixed Lou et al. steps from the gyro-midpoint. On F.2-clipped inputs (√c·d(0, x) ≤ 2), the
# error to a float64 300-step reference shrinks ~5x per two steps and reaches float32's floor
# (~3e-6) at 16 steps, even for skewed weights and near-duplicate points (12 steps: 1e-5).
FRECHET_ITERS = 16


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


def _lou_step(beta: Tensor, gram: Tensor, x2: Tensor, gap_x: Tensor, w_over_gap: Tensor, lorentz_x: Tensor,
              c: Tensor) -> Tensor:
    """One closed-form ball update of Lou et al. (2020) for curvature −c, on coefficients β of
    μ = Σ β_i x_i (so everything is a function of the N × N Gram matrix).

    α_i = w_i g(δ_i) / (1 − c‖x_i‖²) with g(y) = 2 arcosh(1 + 2y)/√(y² + y) = 4 asinhc(√y)/√(1 + y),
    then μ ← η b with b = Σ α_i x_i, i.e. β ← η α, and η = 2 / (A + √(A² − 4c‖b‖²)),
    A = Σ α_i (1 + c‖x_i‖²) (Lou's quadratic root, rationalised so it stays exact as b → 0).
    ηα is invariant to rescaling α, so g's constant 4 is dropped. g is smooth in δ, so the Gram
    form's cancellation in ‖x_i − μ‖² (μ near some x_i) only perturbs α by O(eps); μ itself is
    formed from the points directly at the end. Shapes: β, x2, gap_x, w_over_gap and
    lorentz_x = 1 + c‖x_i‖² (..., N, 1); the step-invariant ones are computed once by the caller.
    """
    tiny = torch.finfo(beta.dtype).tiny
    g_beta = gram @ beta  # (..., N, 1): ⟨x_i, μ⟩
    mu2 = (beta * g_beta).sum(-2, keepdim=True)  # (..., 1, 1): ‖μ‖²
    xmu2 = (x2 - 2 * g_beta + mu2).clamp_min(0)  # ‖x_i − μ‖², rounding can dip below 0
    delta = c * xmu2 / (gap_x * _gap(mu2, c))
    root = delta.clamp_min(tiny).sqrt()  # at δ < tiny, asinh(√δ)/√δ is 1 to the last bit
    alpha = w_over_gap * torch.asinh(root) / (root * torch.sqrt(1 + delta))
    big_a = (alpha * lorentz_x).sum(-2, keepdim=True)
    b2 = (alpha * (gram @ alpha)).sum(-2, keepdim=True)
    # A² > 4c‖b‖² strictly inside the ball (1 + c‖x‖² > 2√c‖x‖): the clamp only absorbs rounding
    return 2 * alpha / (big_a + (big_a * big_a - 4 * c * b2).clamp_min(0).sqrt()).clamp_min(tiny)


@full_precision
def frechet_mean(x: Tensor, w: Tensor, c: Tensor, dim: int, iters: int = FRECHET_ITERS) -> Tensor:
    """Weighted Fréchet mean argmin_μ Σ w_i d²(μ, x_i) (supplement Eq. 3), over `dim`.

    Starts at the gyro-midpoint and takes `iters` closed-form Lou et al. steps. Geodesics of the
    ball through the points stay in their linear span, so the steps run on N coefficients
    against the N × N Gram matrix: O(N²) per step instead of O(N·D), which makes a generous fixed
    count cheap. No convergence test on the host, batched over all other dims; autograd unrolls
    the steps (they contract, so the unrolled gradient tends to the implicit one).
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
    for _ in range(iters):  # static count: unrolled by torch.compile, no data-dependent exit
        beta = _lou_step(beta, gram, x2, gap, w_over_gap, lorentz_x, c)
    return _project((beta * x).sum(-2), c.squeeze(-2) if c.ndim >= 2 else c)


@full_precision
def frechet_weights(points: Tensor, c: Tensor, dim: int, temperature: float = 1.0) -> Tensor:
    """Eq. 4 weights w_p = softmax_p(d(0, h_p) / λ_w) over the point axis `dim`: (...,)."""
    d = _point_dim(points, dim, "frechet_weights")
    if temperature <= 0:
        raise ValueError(f"frechet_weights: temperature λ_w must be > 0, got {temperature}")
    return torch.softmax(dist0(points, c) / temperature, dim=d)
