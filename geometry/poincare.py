"""Poincaré-ball maps and distances, curvature −c (c > 0), points with ‖x‖ < 1/√c.

Every public function computes in float32 (float64 when any input is float64), with autocast
switched off, and returns that dtype: bf16 cannot hold the 1 − c‖x‖² gaps these formulas
divide by (geoopt's and hypll's maps return inf/NaN from bf16 inputs near the boundary).

`c` is a positive tensor (or Python float) broadcastable against `x[..., :1]`, e.g. a 0-d
tensor or a (B, 1) column. Nothing here branches on tensor values, so every function traces
under `torch.compile(fullgraph=True)` without host syncs.

Two identities carry the accuracy (both follow from expanding ‖(−x) ⊕ y‖ in d = y − x):
  (−x) ⊕ y = ((1 − c‖x‖²) d − c‖d‖² x) / ((1 − c‖x‖²)(1 − c‖y‖²) + c‖d‖²),   d = y − x
  d(x, y) = (2/√c) asinh(√δ),   δ = c‖d‖² / ((1 − c‖x‖²)(1 − c‖y‖²))
Both use the difference d directly, so near-duplicate points do not cancel, and asinh has no
artanh(→1) blow-up for far pairs.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, TypeVar

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

BALL_EPS = 4e-3  # project() keeps ‖x‖ ≤ (1 − BALL_EPS)/√c: float32-representable (geoopt's float32 value)
CLIP_EPS = 1e-5  # ε_clip of the tangent clipping, supplement F.2

F = TypeVar("F", bound=Callable[..., Tensor])


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (the dtype all geometry runs in)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def full_precision(fn: F) -> F:
    """Run `fn` with autocast off and every floating tensor argument (and `c`) in float32/64.

    A Python-number `c` becomes a tensor of the compute dtype; integer and bool tensors (masks)
    pass through untouched.
    """
    names = list(inspect.signature(fn).parameters)
    c_index = names.index("c") if "c" in names else None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        floats = [v for v in (*args, *kwargs.values()) if isinstance(v, Tensor) and v.is_floating_point()]
        if not floats:
            raise TypeError(f"geometry.{fn.__name__}: expected at least one floating-point tensor")
        dtype, device = compute_dtype(*floats), floats[0].device
        c = kwargs.get("c") if c_index is None or c_index >= len(args) else args[c_index]
        if (c is None or isinstance(c, Tensor)) and all(t.dtype == dtype for t in floats) \
                and not torch.is_autocast_enabled(device.type):
            # already in the compute dtype with autocast off (every nested call, and the branch in
            # float32 training): the checks above are the whole cost, ~2 µs instead of ~7
            return fn(*args, **kwargs)
        bound = dict(zip(names, args), **kwargs)
        if c is not None and not isinstance(c, Tensor):
            bound["c"] = torch.as_tensor(c, dtype=dtype, device=device)
        cast = {k: v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v for k, v in bound.items()}
        with torch.autocast(device_type=device.type, enabled=False):
            return fn(**cast)

    return wrapper  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Safe elementary pieces (no NaN values or gradients at 0, no division by zero)
# ----------------------------------------------------------------------------------------------

def _gap_floor(t: Tensor) -> float:
    # smallest positive 1 − u we allow: float eps is the first gap below 1 the dtype can hold
    return torch.finfo(t.dtype).eps


def _safe_sqrt(t: Tensor) -> Tensor:
    """sqrt with value 0 and gradient 0 at t ≤ 0 (the subgradient of ‖·‖ at the origin). The clamp
    keeps the unselected branch's derivative finite (1/(2√tiny), which `where` then zeroes), where
    sqrt'(0) = inf would turn into NaN."""
    return torch.where(t > 0, t.clamp_min(torch.finfo(t.dtype).tiny).sqrt(), 0.0)


def _ratio_at_zero_one(f: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """f(u)/u with its limit 1 at u = 0 (artanh's, for log_0), gradient-safe at 0."""
    nz = u > 0
    u_safe = torch.where(nz, u, torch.ones_like(u))
    return torch.where(nz, f(u_safe) / u_safe, torch.ones_like(u))


def _sqnorm(x: Tensor) -> Tensor:
    return (x * x).sum(-1, keepdim=True)  # (..., 1)


def _norm(x: Tensor) -> Tensor:
    """‖x‖ (..., 1) in one op; torch's backward masks 0/0 to 0 at the origin, `_safe_sqrt`'s
    subgradient, at a fifth of the ops of `_safe_sqrt(_sqnorm(x))`."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def _matmul(a: Tensor, b: Tensor, add: Tensor | None = None, alpha: float = 1.0) -> Tensor:
    """a @ b, or add + alpha·(a @ b), as a single `bmm`/`baddbmm` when both are 3-D with one batch
    size (`addmm` when 2-D): matmul's broadcasting wraps the product in five view ops (and autograd
    nodes), and the sum would be two more, each costing as much as the product at these sizes."""
    if a.ndim == 3 and b.ndim == 3 and a.shape[0] == b.shape[0]:
        return torch.bmm(a, b) if add is None else torch.baddbmm(add, a, b, alpha=alpha)
    if add is None:
        return a @ b
    if a.ndim == 2 and b.ndim == 2:
        return torch.addmm(add, a, b, alpha=alpha)
    return add + alpha * (a @ b)


def _gap(x2: Tensor, c: Tensor) -> Tensor:
    """1 − c‖x‖², floored so points on or past the boundary (e.g. bf16-rounded) stay finite."""
    return (1 - c * x2).clamp_min(_gap_floor(x2))


def _artanhc(u: Tensor) -> Tensor:
    return _ratio_at_zero_one(torch.atanh, u.clamp_max(1 - _gap_floor(u)))


# ----------------------------------------------------------------------------------------------
# Un-wrapped kernels: inputs already in the compute dtype; used by every public function below
# ----------------------------------------------------------------------------------------------

def _fit_terms(norm: Tensor, max_norm: Tensor) -> tuple[Tensor, Tensor]:
    """min(max_norm / norm, 1), the factor that pulls a point of this norm back inside the radius,
    with the mask where it binds (the written-out backwards' derivative switch). The quotient runs
    on max(norm, max_norm) and `where` picks it only outside: min(q, 1) alone has the backward
    inf · 0 = NaN at norms near 1e-20, and max_norm / max(norm, max_norm) alone gives max_norm
    (hence c) a rounding-noise gradient inside."""
    on = norm >= max_norm
    return torch.where(on, max_norm / norm.clamp_min(max_norm), 1.0), on


def _fit(norm: Tensor, max_norm: Tensor) -> Tensor:
    return _fit_terms(norm, max_norm)[0]


def _project(x: Tensor, c: Tensor) -> Tensor:
    max_norm = (1 - BALL_EPS) / c.sqrt()
    norm = _norm(x)
    return x * _fit(norm, max_norm)


def _expmap0(v: Tensor, c: Tensor) -> Tensor:
    return _Expmap0.apply(v, c, None, False)  # _project(v · tanhc(√c‖v‖), c), its backward written out


def _logmap0(x: Tensor, c: Tensor) -> Tensor:
    sqrt_c = c.sqrt()
    return x * _artanhc(sqrt_c * _norm(x))


def _mobius_sub(x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    """(−x) ⊕ y in the cancellation-free form of the module docstring."""
    d = y - x
    gx, gy, cd2 = _gap(_sqnorm(x), c), _gap(_sqnorm(y), c), c * _sqnorm(d)
    return (gx * d - cd2 * x) / (gx * gy + cd2)


def _delta(x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    """δ = c‖x − y‖² / ((1 − c‖x‖²)(1 − c‖y‖²)), (..., 1)."""
    return c * _sqnorm(y - x) / (_gap(_sqnorm(x), c) * _gap(_sqnorm(y), c))


def _dist_from_delta(delta: Tensor, c: Tensor) -> Tensor:
    return 2 * torch.asinh(_safe_sqrt(delta)) / c.sqrt()


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------

@full_precision
def project(x: Tensor, c: Tensor) -> Tensor:
    """Pull points back inside the ball: ‖x‖ ≤ (1 − 4e-3)/√c."""
    return _project(x, c)


@full_precision
def clip_tangent(v: Tensor, c: Tensor, eps: float = CLIP_EPS) -> Tensor:
    """Supplement F.2 tangent clipping v / max(1, √c‖v‖ + ε_clip), applied before expmap0."""
    scale = (c.sqrt() * _norm(v) + eps).clamp_min(1.0)
    return v / scale


@full_precision
def expmap0(v: Tensor, c: Tensor) -> Tensor:
    """exp_0(v) = tanh(√c‖v‖) v / (√c‖v‖), projected inside the ball."""
    return _expmap0(v, c)


class _Expmap0(torch.autograd.Function):
    """exp_0 (projected), or exp_0 after scaling and F.2 clipping (`scale` not None), with its
    backward written out. Both are v times one per-row factor f = tanh(u)/(√c‖v‖), u = √c × the
    (clipped) tangent norm, and every derivative of f is one log-derivative h:
      ∂ln f/∂ln‖v‖ = h − 1,   ∂ln f/∂ln s = h,   ∂ln f/∂ln c = (h − 1)/2,
      h = q · u(1 − tanh²u)/tanh u,   q = ∂ln u/∂ln(√c s‖v‖) = 1, or ε/z = 1 − u where F.2 clips;
    where the projection binds, ‖out‖ is the constant radius: h = 0. So with G = ⟨g, out⟩
      ∂L/∂v = f g + G (h − 1) v/‖v‖²,   ∂L/∂s = G h / s,   ∂L/∂c = G (h − 1)/(2c):
    about 25 ops a call where autograd recorded about 30 and dispatched about 60 in backward.
    `tests/geometry/test_poincare.py` gradchecks it in every regime, and the gradient at v = 0 is s·I.

    The clipped map needs no projection: F.2 keeps u < 1, so ‖out‖ = tanh(u)/√c < 0.762/√c, far
    inside the projection radius (1 − 4e-3)/√c. Hence its distance to the origin is exactly
    d(0, out) = 2u/√c, which `with_dist0` returns as a second output (..., 1): its own
    log-derivatives are q, q and (q − 1)/2, so with D = ∂L/∂d0 · d0 and A = G h + D q,
      ∂L/∂ln‖v‖ = A − G,   ∂L/∂ln s = A,   ∂L/∂ln c = (A − G − D)/2."""

    @staticmethod
    def forward(ctx, v: Tensor, c: Tensor, scale: Tensor | None, with_dist0: bool = False):
        tiny = torch.finfo(v.dtype).tiny
        sqrt_c = c.sqrt()
        norm = _norm(v)  # (..., 1)
        clip_on = fit_on = None
        if scale is None:
            u = sqrt_c * norm
        else:
            z = sqrt_c * scale * norm + CLIP_EPS  # √c‖s v‖ + ε_clip
            clip_on = z >= 1
            u = (z - CLIP_EPS) / z.clamp_min(1.0)  # √c · ‖s v‖ / max(1, z) < 1
        u = u.clamp_min(tiny)  # tanh(tiny)/tiny = 1, the limit at v = 0, without a 0/0
        tanh_u = torch.tanh(u)
        exp = tanh_u / u  # tanh(u)/u ∈ (0, 1]
        if scale is None:
            max_norm = (1 - BALL_EPS) / sqrt_c
            fit, fit_on = _fit_terms(tanh_u / sqrt_c, max_norm)  # the projection of ‖out‖ = tanh(u)/√c
            factor = exp * fit
        else:
            factor = exp * scale / z.clamp_min(1.0)  # tanh(u)/u · s / max(1, z)
        dist0 = 2 * u / sqrt_c if with_dist0 else None
        ctx.save_for_backward(v, c, scale, norm, u, tanh_u, exp, factor, dist0)
        ctx.masks = (clip_on, fit_on)
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        return (v * factor, dist0) if with_dist0 else v * factor

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor | None, g_dist0: Tensor | None = None):
        v, c, scale, norm, u, tanh_u, exp, factor, dist0 = ctx.saved_tensors
        clip_on, fit_on = ctx.masks
        h = (1 - tanh_u * tanh_u) / exp  # u(1 − tanh²u)/tanh u
        if scale is None:
            q, h = 1.0, h.masked_fill(fit_on, 0.0)
        else:
            q = torch.where(clip_on, 1 - u, 1.0)  # ∂ln u/∂ln(√c s‖v‖)
            h = h * q
        big_g = 0.0 if g is None else (g * v).sum(-1, keepdim=True) * factor  # G = ⟨g, out⟩
        big_a = big_g * h
        big_d = 0.0
        if g_dist0 is not None:
            big_d = g_dist0 * dist0
            big_a = big_a + big_d * q
        # (A − G)/‖v‖² is finite at v = 0: A = G = 0 there (the clamp only avoids 0/0)
        radial = (big_a - big_g) / (norm * norm).clamp_min(torch.finfo(v.dtype).tiny)
        grad_v = radial * v if g is None else torch.addcmul(factor * g, radial, v)
        grad_c = grad_scale = None
        if ctx.needs_input_grad[1]:
            grad_c = ((big_a - big_g - big_d) / (c + c)).sum_to_size(c.shape)
        if scale is not None and ctx.needs_input_grad[2]:
            grad_scale = (big_a / scale).sum_to_size(scale.shape)
        return grad_v, grad_c, grad_scale, None


@full_precision
def clipped_expmap0(v: Tensor, c: Tensor, scale: Tensor, with_dist0: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """expmap0(clip_tangent(scale · v)) (supplement Eq. 2 with F.2 clipping) as one radial
    rescaling of v: scaling, clipping, exp_0 and projection each multiply v by a function of
    ‖v‖, so only ‖v‖ and one final product touch the (..., D) values. `scale` broadcasts
    against v[..., :1]. The backward is written out (`_Expmap0`).

    `with_dist0=True` also returns each point's distance to the origin (...,): twice the clipped
    tangent's norm, exact, with none of `dist0`'s artanh and its backward."""
    if not isinstance(scale, Tensor):
        scale = torch.as_tensor(scale, dtype=v.dtype, device=v.device)
    if not with_dist0:
        return _Expmap0.apply(v, c, scale, False)
    points, d0 = _Expmap0.apply(v, c, scale, True)
    return points, d0.squeeze(-1)


@full_precision
def logmap0(x: Tensor, c: Tensor) -> Tensor:
    """log_0(x) = artanh(√c‖x‖) x / (√c‖x‖)."""
    return _logmap0(x, c)


@full_precision
def mobius_add(x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    """Möbius addition x ⊕ y (broadcasting), projected inside the ball."""
    return _project(_mobius_sub(-x, y, c), c)


@full_precision
def expmap(x: Tensor, v: Tensor, c: Tensor) -> Tensor:
    """exp_x(v) = x ⊕ exp_0(λ_x v / 2), λ_x = 2 / (1 − c‖x‖²)."""
    half_lam = 1 / _gap(_sqnorm(x), c)
    return _project(_mobius_sub(-x, _expmap0(half_lam * v, c), c), c)


@full_precision
def logmap(x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    """log_x(y) = (2/λ_x) log_0((−x) ⊕ y): the tangent vector at x pointing to y."""
    return _gap(_sqnorm(x), c) * _logmap0(_mobius_sub(x, y, c), c)


@full_precision
def mobius_matvec(M: Tensor, x: Tensor, c: Tensor) -> Tensor:
    """M ⊗ x = exp_0(M log_0(x)) for M of shape (D_out, D_in) and x (..., D_in)."""
    if M.ndim != 2 or M.shape[-1] != x.shape[-1]:
        raise ValueError(f"mobius_matvec: M must be (D_out, {x.shape[-1]}), got {tuple(M.shape)}")
    return _expmap0(_logmap0(x, c) @ M.transpose(0, 1), c)


class _MobiusAffine(torch.autograd.Function):
    """(M ⊗ x) ⊕ b with its backward written out. M ⊗ x = s·y with y = M x and one per-row factor
    s = tanh(v)/(√c‖y‖) (v = √c‖y‖·artanh(u)/u, u = √c‖x‖; projected), whose derivatives are
    log-derivatives as in `_Expmap0`: with h = v(1 − tanh²v)/tanh v (0 where the projection binds)
    and k = ∂ln(artanh(u)/u)/∂ln u = 1/((1 − u²)·artanh(u)/u) − 1 (0 where u is clamped),
      ∂ln s/∂ln‖y‖ = h − 1,   ∂ln s/∂ln‖x‖ = h·k,   ∂ln s/∂ln c = (h(1 + k) − 1)/2.
    Then R = α y + β b (Möbius addition, α and β functions of ‖p‖², ⟨p, b⟩, ‖b‖² and c) and the
    projection of R, reversed through those scalars. About 115 ops in backward where autograd
    dispatched about 240 (and a first written-out sweep 180). Every clamp has the derivative its
    forward has (0 where clamped), as under autograd; `tests/geometry/test_poincare.py` checks the
    gradients against autograd's through `mobius_add(mobius_matvec(...))` with both projections
    binding, gradchecks them, and checks them finite at the origin, at the boundary and for tiny
    vectors.
    """

    @staticmethod
    def forward(ctx, M: Tensor, x: Tensor, b: Tensor, c: Tensor) -> Tensor:
        tiny, floor = torch.finfo(x.dtype).tiny, _gap_floor(x)
        sqrt_c = c.sqrt()
        max_norm = (1 - BALL_EPS) / sqrt_c
        y = x @ M.transpose(0, 1)  # (..., D_out)
        nx, ny = _norm(x), _norm(y)  # (..., 1)
        y2, yb, b2 = ny * ny, (y @ b).unsqueeze(-1), (b * b).sum()
        # M ⊗ x = s·y: log_0's factor artanh(u)/u, exp_0's tanh(v)/v, then the projection
        u_raw = sqrt_c * nx
        u = u_raw.clamp(tiny, 1 - floor)  # tiny: artanh(u)/u → 1 at x = 0 without a 0/0
        lf = torch.atanh(u) / u
        v = (sqrt_c * ny * lf).clamp_min(tiny)  # likewise tanh(v)/v at y = 0
        tanh_v = torch.tanh(v)
        fit, fit_on = _fit_terms(tanh_v / sqrt_c, max_norm)  # ‖M ⊗ x‖ = tanh(v)/√c
        s = tanh_v / v * lf * fit
        # p ⊕ b = α y + β b with p = s·y (Möbius addition's coefficients)
        p2, pb = s * s * y2, s * yb
        one_pb = 1 + 2 * c * pb
        den_raw = one_pb + c * c * p2 * b2
        den = den_raw.clamp_min(tiny)
        num = one_pb + c * b2
        alpha = s * num / den
        beta = (1 - c * p2) / den  # unfloored: p is projected, so 1 − c‖p‖² ≥ 1 − (1 − BALL_EPS)² ≈ 8e-3
        raw = torch.addcmul(beta * b, alpha, y)  # (..., D_out)
        r = _norm(raw)
        shrink, shrink_on = _fit_terms(r, max_norm)  # the final projection
        ctx.save_for_backward(M, x, b, c, y, nx, ny, yb, b2, u, lf, v, tanh_v, s, p2, pb, den, num, alpha, beta,
                              raw, r, shrink)
        ctx.masks = (u_raw < 1 - floor, fit_on, den_raw >= tiny, shrink_on)
        return raw * shrink

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        (M, x, b, c, y, nx, ny, yb, b2, u, lf, v, tanh_v, s, p2, pb, den, num, alpha, beta, raw, r,
         shrink) = ctx.saved_tensors
        u_ok, fit_on, den_ok, shrink_on = ctx.masks
        tiny = torch.finfo(x.dtype).tiny
        y2 = ny * ny
        # out = shrink·R; where it binds, out = max_norm·R/‖R‖: ∂L/∂R = shrink·g − κ R, and
        # ∂L/∂ln max_norm = ⟨g, out⟩
        g_ln_max = torch.where(shrink_on, shrink * (g * raw).sum(-1, keepdim=True), 0.0)
        kappa = g_ln_max / (r * r).clamp_min(tiny)
        g_raw = torch.addcmul(shrink * g, kappa, raw, value=-1)  # (..., D_out)
        # R = α y + β b
        g_alpha = (g_raw * y).sum(-1, keepdim=True)
        g_beta = (g_raw @ b).unsqueeze(-1)
        # α = s·num/den, β = gap/den (den past its clamp)
        g_num = g_alpha * s / den
        g_gap = g_beta / den
        g_den = -torch.addcmul(g_alpha * alpha, g_beta, beta) / den * den_ok
        g_s = g_alpha * num / den
        # num = 1 + 2c⟨p, b⟩ + c‖b‖², den = 1 + 2c⟨p, b⟩ + c²‖p‖²‖b‖², gap = 1 − c‖p‖²
        g_one_pb = g_num + g_den
        c2_den = c * c * g_den
        g_pb = 2 * c * g_one_pb
        g_p2 = c2_den * b2 - c * g_gap
        g_b2 = c * g_num + c2_den * p2
        g_c = 2 * pb * g_one_pb + b2 * g_num + 2 * c * p2 * b2 * g_den - p2 * g_gap
        # ‖p‖² = s²‖y‖², ⟨p, b⟩ = s⟨y, b⟩
        g_s = g_s + 2 * s * y2 * g_p2 + yb * g_pb
        g_y2, g_yb = s * s * g_p2, s * g_pb
        # s through its log-derivatives (class docstring)
        h = ((1 - tanh_v * tanh_v) * v / tanh_v).masked_fill(fit_on, 0.0)
        k = ((1 - u * u) * lf).reciprocal().sub(1) * u_ok
        big_s = g_s * s  # ∂L/∂ln s
        g_c = g_c + (big_s * (h * (1 + k) - 1) - g_ln_max) / (2 * c)  # max_norm ∝ c^(−1/2)
        coef_y = 2 * g_y2 + big_s * (h - 1) / y2.clamp_min(tiny)  # ∂L/∂y = coef_y·y + …
        coef_x = big_s * h * k / (nx * nx).clamp_min(tiny)  # finite at x = 0: k ~ u² there
        # back to the vectors (y = x Mᵀ)
        grad_y = torch.addcmul(torch.addcmul(alpha * g_raw, coef_y, y), g_yb, b)
        grad_x = torch.addcmul(grad_y @ M, coef_x, x)
        grad_m = grad_y.reshape(-1, grad_y.shape[-1]).transpose(0, 1) @ x.reshape(-1, x.shape[-1])
        grad_b = torch.addcmul(beta * g_raw, g_yb, y).reshape(-1, b.shape[-1]).sum(0) + 2 * b * g_b2.sum()
        return grad_m, grad_x, grad_b, g_c.sum_to_size(c.shape)


@full_precision
def mobius_affine(M: Tensor, x: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """(M ⊗ x) ⊕ b, the key transform of supplement C.2.2, without materialising the three
    intermediate points: every norm the chain needs is a combination of ‖x‖², ‖Mx‖², ⟨Mx, b⟩
    and ‖b‖², so the (..., D) work is one matmul, two reductions and one final axpy.
    M (D_out, D_in), x (..., D_in), b (D_out,) a point → (..., D_out), projected.
    The backward is written out (`_MobiusAffine`)."""
    if M.ndim != 2 or M.shape[-1] != x.shape[-1] or b.shape != M.shape[:1]:
        raise ValueError(f"mobius_affine: need M (D_out, {x.shape[-1]}) and b (D_out,), "
                         f"got {tuple(M.shape)} and {tuple(b.shape)}")
    return _MobiusAffine.apply(M, x, b, c)


@full_precision
def dist(x: Tensor, y: Tensor, c: Tensor) -> Tensor:
    """Geodesic distance (2/√c) asinh(√δ), broadcasting over leading dims: (...,)."""
    return _dist_from_delta(_delta(x, y, c), c).squeeze(-1)


@full_precision
def dist0(x: Tensor, c: Tensor) -> Tensor:
    """Distance to the origin (2/√c) artanh(√c‖x‖), (...,)."""
    sqrt_c = c.sqrt()
    return (2 * torch.atanh((sqrt_c * _norm(x)).clamp_max(1 - _gap_floor(x))) / sqrt_c).squeeze(-1)


def _row_index(idx: Tensor, dim: int) -> Tensor:
    """Row indices idx (..., N, k) as a gather/scatter index (..., N·k, dim) along the row axis
    (a view: no N × M × D tensor either way)."""
    n, k = idx.shape[-2:]
    return idx.reshape(*idx.shape[:-2], n * k, 1).expand(*idx.shape[:-2], n * k, dim)


def _gram_terms(x: Tensor, y: Tensor, c: Tensor) -> tuple[Tensor, ...]:
    """The Gram form of every pair's ‖x − y‖² = ‖x‖² + ‖y‖² − 2⟨x, y⟩ (..., N, M), raw (rounding can
    take it below 0), with ‖x‖² (..., N, 1), ‖y‖² (..., 1, M), their gaps and δ / ‖x − y‖² =
    c / ((1 − c‖x‖²)(1 − c‖y‖²)): (x2, y2, gap_x, gap_y, d2_raw, scale)."""
    x2, y2 = _sqnorm(x), _sqnorm(y).transpose(-1, -2)
    gx, gy = _gap(x2, c), _gap(y2, c)
    return x2, y2, gx, gy, _matmul(x, y.transpose(-1, -2), add=x2 + y2, alpha=-2), c / (gx * gy)


class _RefinedPairwiseDist(torch.autograd.Function):
    """`pairwise_dist` with k columns per row from direct differences (the `refine` nearest, or the
    given `exact` ones), the backward written out: autograd's graph of the top-k, gather, exact
    recomputation and scatter costs more than the matmuls at Geo-Sign's sizes (the attention's
    B × P × L scores, the contrastive loss's B × B logits).

    With G = ∂L/∂d · ∂d/∂δ, ∂d/∂δ = 1/(√c √(δ(1 + δ))) (0 at δ = 0, `_safe_sqrt`'s subgradient),
    g = 1 − c‖x‖², h = 1 − c‖y‖², A = G c/(g h) and R_i = Σ_j G_ij δ_ij / g_i:
      ∂L/∂x_i = 2 Σ_j A_ij (x_i − y_j) + 2c x_i R_i          (R's term only where g is not floored)
      ∂L/∂c   = Σ −∂L/∂d · d/(2c) + Σ G δ/c + Σ_i R_i ‖x_i‖² + Σ_j R_j ‖y_j‖²
    and ∂L/∂y_j alike. Σ_j A_ij (x_i − y_j) runs as x_i Σ_j A_ij − A y on the Gram entries and
    from direct differences on the refined ones, where A ∝ 1/√δ is large and the matmul form
    would cancel.

    (x (..., N, D), y (..., M, D), c, refine ≥ 1 or exact (..., N, k)) → d (..., N, M). The
    backward reuses the forward's norms, gaps, δ and direct differences.
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, c: Tensor, refine: int, exact: Tensor | None) -> Tensor:
        x2, y2, gx, gy, d2_raw, scale = _gram_terms(x, y, c)
        scale = scale.expand(d2_raw.shape)  # (..., N, M), for the gather below
        delta = d2_raw.clamp_min(0) * scale
        if exact is None:
            columns = delta.topk(min(refine, y.shape[-2]), dim=-1, largest=False).indices  # (..., N, k)
        else:
            columns = exact.expand(*d2_raw.shape[:-1], exact.shape[-1])  # (..., N, k)
        rows = _row_index(columns, x.shape[-1])  # (..., N·k, D)
        diff = x.unsqueeze(-2) - y.expand(*columns.shape[:-2], *y.shape[-2:]).gather(-2, rows).view(*columns.shape, -1)
        # (..., N, k, D) above: x_i − y_j, no cancellation
        delta = delta.scatter(-1, columns, _sqnorm(diff).squeeze(-1) * scale.gather(-1, columns))
        d = 2 * torch.asinh(delta.sqrt()) / c.sqrt()  # δ ≥ 0 here, and no autograd: plain sqrt
        ctx.save_for_backward(x, y, c, x2, y2, gx, gy, scale, d, delta, d2_raw > 0, columns, rows, diff)
        return d

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, y, c, x2, y2, gx, gy, scale, d, delta, gram_kept, columns, rows, diff = ctx.saved_tensors
        dd = torch.addcmul(delta, delta, delta)  # δ(1 + δ); the clamp keeps the unselected rsqrt finite
        big_g = grad * torch.where(dd > 0, dd.clamp_min(torch.finfo(dd.dtype).tiny).rsqrt(), 0.0) / c.sqrt()
        a = big_g * scale  # ∂L/∂‖x_i − y_j‖²
        g_delta = big_g * delta
        # R terms, zero where the gap was floored (the floor has no derivative)
        rx = g_delta.sum(-1, keepdim=True) / gx * (gx > _gap_floor(gx))  # (..., N, 1)
        ry = g_delta.sum(-2, keepdim=True) / gy * (gy > _gap_floor(gy))  # (..., 1, M)
        near_a = a.gather(-1, columns).unsqueeze(-1)  # (..., N, k, 1)
        gram_a = (a * gram_kept).scatter(-1, columns, 0.0)  # Gram entries only, past their clamp_min(0)
        grad_x = grad_y = grad_c = None
        if ctx.needs_input_grad[0]:
            grad_x = 2 * (x * (gram_a.sum(-1, keepdim=True) + c * rx) - _matmul(gram_a, y) + (near_a * diff).sum(-2))
            grad_x = grad_x.sum_to_size(x.shape)
        if ctx.needs_input_grad[1]:
            grad_y = 2 * (y * (gram_a.sum(-2, keepdim=True) + c * ry).transpose(-1, -2) - _matmul(gram_a.transpose(-1, -2), x))
            grad_y = grad_y.scatter_add(-2, rows, (-2 * near_a * diff).view(rows.shape)).sum_to_size(y.shape)
        if ctx.needs_input_grad[2]:
            grad_c = torch.addcmul(g_delta, grad, d, value=-0.5).sum((-2, -1), keepdim=True) / c \
                + (rx * x2).sum(-2, keepdim=True) + (ry * y2).sum(-1, keepdim=True)
            grad_c = grad_c.sum_to_size(c.shape)
        return grad_x, grad_y, grad_c, None, None


@full_precision
def pairwise_dist(x: Tensor, y: Tensor, c: Tensor, refine: int = 1, exact: Tensor | None = None) -> Tensor:
    """All-pairs distances (..., N, D) × (..., M, D) → (..., N, M) without an N×M×D tensor.

    ‖x_i − y_j‖² comes from the Gram identity ‖x‖² + ‖y‖² − 2⟨x, y⟩, which cancels
    catastrophically for near-duplicate pairs (over 1% relative error in float32 on pairs about
    2e-4 apart, `tests/geometry/test_poincare.py`).
    So for each row the `refine` nearest columns are recomputed from direct differences
    (a fixed-size gather: no data-dependent shapes; the backward is written out,
    `_RefinedPairwiseDist`). A caller that knows which pairs must be exact (a contrastive loss's
    positives) passes their column indices `exact` (..., N, k) (int64, distinct in each row,
    broadcasting against the batch dims) instead: no top-k, and `refine` is ignored. `c` must
    broadcast against (..., 1, 1).
    """
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"pairwise_dist: feature dims differ, x {tuple(x.shape)} vs y {tuple(y.shape)}")
    if exact is not None:
        if exact.dtype != torch.int64 or exact.ndim < 2 or exact.shape[-2] not in (1, x.shape[-2]):
            raise ValueError(f"pairwise_dist: exact must be int64 column indices (..., {x.shape[-2]}, k), "
                             f"got {exact.dtype} {tuple(exact.shape)}")
        return _RefinedPairwiseDist.apply(x, y, c, 0, exact)
    if min(refine, y.shape[-2]) <= 0:
        *_, d2_raw, scale = _gram_terms(x, y, c)
        return _dist_from_delta(d2_raw.clamp_min(0) * scale, c)
    return _RefinedPairwiseDist.apply(x, y, c, refine, None)
