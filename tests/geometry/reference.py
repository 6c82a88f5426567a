"""Textbook float64 Poincaré formulas (Ungar; Ganea et al. 2018), written independently of
geometry/ so the tests compare against something that shares none of its tricks."""
from __future__ import annotations

import torch
from torch import Tensor


def _c(c, x: Tensor) -> Tensor:
    return torch.as_tensor(c, dtype=torch.float64)


def mobius_add(x: Tensor, y: Tensor, c) -> Tensor:
    c = _c(c, x)
    xy = (x * y).sum(-1, keepdim=True)
    x2, y2 = (x * x).sum(-1, keepdim=True), (y * y).sum(-1, keepdim=True)
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c * c * x2 * y2)


def dist(x: Tensor, y: Tensor, c) -> Tensor:
    c = _c(c, x)
    num = 2 * c * ((x - y) ** 2).sum(-1)
    den = (1 - c * (x * x).sum(-1)) * (1 - c * (y * y).sum(-1))
    return torch.acosh(1 + num / den) / c.sqrt()


def expmap0(v: Tensor, c) -> Tensor:
    c = _c(c, v)
    n = v.norm(dim=-1, keepdim=True)
    return torch.tanh(c.sqrt() * n) * v / (c.sqrt() * n)


def logmap0(x: Tensor, c) -> Tensor:
    c = _c(c, x)
    n = x.norm(dim=-1, keepdim=True)
    return torch.atanh(c.sqrt() * n) * x / (c.sqrt() * n)


def lam(x: Tensor, c) -> Tensor:
    return 2 / (1 - _c(c, x) * (x * x).sum(-1, keepdim=True))


def expmap(x: Tensor, v: Tensor, c) -> Tensor:
    c = _c(c, x)
    n = v.norm(dim=-1, keepdim=True)
    return mobius_add(x, torch.tanh(c.sqrt() * lam(x, c) * n / 2) * v / (c.sqrt() * n), c)


def logmap(x: Tensor, y: Tensor, c) -> Tensor:
    c = _c(c, x)
    w = mobius_add(-x, y, c)
    n = w.norm(dim=-1, keepdim=True)
    return 2 / (c.sqrt() * lam(x, c)) * torch.atanh(c.sqrt() * n) * w / n


def frechet_variance(mu: Tensor, x: Tensor, w: Tensor, c) -> Tensor:
    """Σ_i w_i d²(μ, x_i) for μ (..., D), x (..., N, D), w (..., N)."""
    return (w * dist(mu.unsqueeze(-2), x, c) ** 2).sum(-1)


def karcher_mean(x: Tensor, w: Tensor, c, iters: int = 500) -> Tensor:
    """Supplement Eq. 7 with η = 1, run to convergence in float64: the slow ground truth."""
    w = w / w.sum(-1, keepdim=True)
    mu = x[..., 0, :]
    for _ in range(iters):
        mu = expmap(mu, (w.unsqueeze(-1) * logmap(mu.unsqueeze(-2), x, c)).sum(-2), c)
    return mu


def ball_points(n: int, d: int, c: float, max_radius: float = 0.99, seed: int = 0) -> Tensor:
    """n float64 points with radii uniform in [0, max_radius]/√c and random directions."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    r = torch.rand(n, 1, generator=g, dtype=torch.float64) * max_radius
    return u / u.norm(dim=-1, keepdim=True) * r / c ** 0.5
