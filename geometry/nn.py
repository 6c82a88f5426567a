"""Geo-Sign's hyperbolic layers: projection into the ball, token attention, contrastive loss.

Each layer takes a shared `Curvature` module and evaluates c once per call, or takes the value
its caller already evaluated for this step (`c=`: one softplus and one gradient reduction per
step instead of one per layer). The geometric part
of every forward runs with autocast off in float32 (float64 for a float64 model); only the
Euclidean `nn.Linear` of the projection follows the caller's autocast.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist_
import torch.nn.functional as F
from torch import Tensor, nn

from .curvature import Curvature
from .frechet import weighted_midpoints
from .poincare import clipped_expmap0, expmap0, mobius_affine, pairwise_dist

TAU_MIN, TAU_RANGE = 0.01, 1.99  # τ = sigmoid(logit)·1.99 + 0.01 ∈ (0.01, 2), listings 7–8


def _bounded_tau(logit: Tensor) -> Tensor:
    return torch.sigmoid(logit) * TAU_RANGE + TAU_MIN


def _tau_logit(tau: float, name: str) -> float:
    """Inverse of `_bounded_tau`, so constructors can take the temperature itself."""
    if not TAU_MIN < tau < TAU_MIN + TAU_RANGE:
        raise ValueError(f"{name} must lie in ({TAU_MIN}, {TAU_MIN + TAU_RANGE}), got {tau}")
    p = (tau - TAU_MIN) / TAU_RANGE
    return math.log(p / (1 - p))


class HyperbolicProjection(nn.Module):
    """h = exp_0(clip(s · (W f + b))), s = exp(log_scale) (supplement Eq. 2, listing 4, F.2 clipping).

    (..., dim_in) → (..., dim_out) points in the ball, float32 (float64 for a float64 model).
    With `groups=G` it holds G independent projections (Geo-Sign's one per body part) and maps
    (G, ..., dim_in) → (G, ..., dim_out) in one batched matmul and one pass of the geometry,
    instead of G small passes whose per-op overhead dominates at these sizes.
    Hyperbolic-branch parameter: `log_scale` (and the shared curvature); `weight` and `bias`
    are the Euclidean map (the Linear's output follows the caller's autocast).
    """

    def __init__(self, dim_in: int, dim_out: int, curvature: Curvature, init_scale: float = 1.0,
                 groups: int | None = None) -> None:
        super().__init__()
        if init_scale <= 0:
            raise ValueError(f"HyperbolicProjection: init_scale must be positive, got {init_scale}")
        if groups is not None and groups < 1:
            raise ValueError(f"HyperbolicProjection: groups must be None or >= 1, got {groups}")
        self.curvature, self.groups, self.dim_in = curvature, groups, dim_in
        lead = () if groups is None else (groups,)
        self.weight = nn.Parameter(torch.empty(*lead, dim_out, dim_in))
        self.bias = nn.Parameter(torch.empty(*lead, dim_out))
        for w, b in zip(self.weight.view(-1, dim_out, dim_in), self.bias.view(-1, dim_out)):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's default initialisation, per group
            nn.init.uniform_(b, -dim_in ** -0.5, dim_in ** -0.5)
        # log s_p, Eq. 2. Listing 4 starts at s = 1, where wide features usually exceed the F.2 clip
        # radius 1/√c, so every point starts on the same sphere; MERU starts at s = dim**-0.5.
        self.log_scale = nn.Parameter(torch.full(lead, math.log(init_scale)))

    def linear(self, x: Tensor) -> Tensor:
        """The Euclidean part W f + b: (..., dim_out), or (G, ..., dim_out) when grouped."""
        grouped = self.groups is not None
        if x.shape[-1] != self.dim_in or (grouped and (x.ndim < 2 or x.shape[0] != self.groups)):
            lead = "" if not grouped else f"{self.groups}, "
            raise ValueError(f"HyperbolicProjection: expected ({lead}..., {self.dim_in}), got {tuple(x.shape)}")
        if not grouped:
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(self.groups, -1, self.dim_in)  # (G, N, dim_in)
        v = torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight.transpose(1, 2))  # (G, N, dim_out)
        return v.reshape(*x.shape[:-1], -1)

    def forward(self, x: Tensor, c: Tensor | None = None, with_dist0: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Points (..., dim_out); with `with_dist0` also their distances to the origin (...,),
        exact from the clipped tangent (`clipped_expmap0`)."""
        v = self.linear(x)  # in the caller's autocast dtype
        c = self.curvature() if c is None else c
        scale = self.log_scale.exp()
        if self.groups is not None:
            scale = scale.view(-1, *[1] * (v.ndim - 1))  # (G, 1, ..., 1)
        return clipped_expmap0(v, c, scale, with_dist0=with_dist0)


class HyperbolicAttention(nn.Module):
    """Token-method attention (supplement C.2.2, listing 7), all parts and tokens in one pass.

    keys k_j = (M_key ⊗ h_j) ⊕ b_key; scores −d(q_p, k_j)/τ_attn, padding-masked softmax over
    tokens; context c_p = gyro-midpoint of the *untransformed* tokens h_j with those weights.
    queries (B, P, D), tokens (B, L, D), mask (B, L) bool (True = real token) →
    contexts (B, P, D), attention weights (B, P, L). A row with no real token gets zero weights
    and the origin as context.

    Hyperbolic-branch parameters: `M_key` (init identity), `b_key` (a tangent vector at the
    origin, b_key point = exp_0(b_key), init 0, so a plain optimiser keeps it in the ball) and
    `tau_attn_logit` (τ_attn = sigmoid(logit)·1.99 + 0.01, init 1.0: the public release's
    softmax has no temperature, i.e. τ_attn = 1).
    """

    def __init__(self, dim: int, curvature: Curvature, init_tau_attn: float = 1.0) -> None:
        super().__init__()
        self.curvature = curvature
        self.M_key = nn.Parameter(torch.eye(dim))
        self.b_key = nn.Parameter(torch.zeros(dim))
        self.tau_attn_logit = nn.Parameter(torch.tensor(_tau_logit(init_tau_attn, "init_tau_attn")))

    @property
    def tau_attn(self) -> Tensor:
        return _bounded_tau(self.tau_attn_logit)

    def forward(self, queries: Tensor, tokens: Tensor, mask: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        dim = self.M_key.shape[0]
        if queries.ndim != 3 or tokens.ndim != 3 or queries.shape[-1] != dim or tokens.shape[-1] != dim:
            raise ValueError(f"HyperbolicAttention: queries (B, P, {dim}) and tokens (B, L, {dim}) expected, "
                             f"got {tuple(queries.shape)} and {tuple(tokens.shape)}")
        if mask.dtype != torch.bool or mask.shape != tokens.shape[:2] or queries.shape[0] != tokens.shape[0]:
            raise ValueError(f"HyperbolicAttention: mask must be bool {tuple(tokens.shape[:2])} and batch sizes "
                             f"must agree, got mask {mask.dtype} {tuple(mask.shape)}, queries {tuple(queries.shape)}")
        c = self.curvature() if c is None else c
        keys = mobius_affine(self.M_key, tokens, expmap0(self.b_key, c), c)  # (M ⊗ h) ⊕ b: (B, L, D)
        with torch.autocast(device_type=queries.device.type, enabled=False):
            scores = -pairwise_dist(queries, keys, c) / self.tau_attn.to(keys.dtype)  # (B, P, L)
            valid = mask.unsqueeze(1)  # (B, 1, L)
            # finfo.min instead of −inf: an all-padding row gives finite weights, then zeroed below
            scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1) * valid
        return weighted_midpoints(weights, tokens, c), weights


class HyperbolicContrastiveLoss(nn.Module):
    """Hyperbolic InfoNCE (main-paper Eq. 5, listing 8): row i of x is positive with row i of y.

    x, y (B, D), or (G, B, D) for G independent problems solved in one pass (the token method's
    four parts); the loss is then the mean over groups, each contrasting within its own group.
    logits_ij = −d(x_i, y_j)/τ + m·[i ≠ j], cross-entropy with label smoothing. Returns
    (loss, {"tau", "margin", "pos_dist"}) with detached logging values.

    The margin m = max(m_raw, 0) is *added* to the negatives' logits, so a negative only stops
    contributing once it is m logits further than the positive. That is the public release's
    sign (and the usual additive-margin meaning); listing 8 subtracts it, which relaxes the
    task instead.

    A single pair has no negatives: the loss is a zero that still carries the graph. With
    `gather_negatives=True` and an initialised process group, targets are all-gathered (with
    gradient) so every rank contrasts its anchors against the global batch; ranks must hold
    equal batch sizes.

    Hyperbolic-branch parameters: `tau_logit` (τ = sigmoid(logit)·1.99 + 0.01, init 1.0 as in
    the public release, τ ≈ 1.47) and `margin` (init 0.3, released default).
    """

    def __init__(self, curvature: Curvature, label_smoothing: float = 0.2, init_margin: float = 0.3,
                 gather_negatives: bool = False, init_tau_logit: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"HyperbolicContrastiveLoss: label_smoothing must be in [0, 1), got {label_smoothing}")
        if init_margin < 0:
            raise ValueError(f"HyperbolicContrastiveLoss: init_margin must be >= 0, got {init_margin}")
        self.curvature = curvature
        self.label_smoothing = label_smoothing  # 0.2, label_smoothing_hyp, Table 3
        self.gather_negatives = gather_negatives
        self.tau_logit = nn.Parameter(torch.tensor(float(init_tau_logit)))
        self.margin = nn.Parameter(torch.tensor(float(init_margin)))  # m, learnable, Table 3

    def _targets(self, y: Tensor) -> tuple[Tensor, int]:
        """All candidate targets (..., M, D) and the offset of this rank's rows among them."""
        if not (self.gather_negatives and dist_.is_available() and dist_.is_initialized()):
            return y, 0
        from torch.distributed.nn.functional import all_gather  # autograd-aware collective

        gathered = all_gather(y.contiguous())
        return torch.cat(gathered, dim=-2), dist_.get_rank() * y.shape[-2]

    def forward(self, x: Tensor, y: Tensor, c: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if x.ndim not in (2, 3) or x.shape != y.shape:
            raise ValueError(f"HyperbolicContrastiveLoss: x and y must both be (B, D) or (G, B, D), "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        c = self.curvature() if c is None else c
        tau = _bounded_tau(self.tau_logit)
        margin = self.margin.clamp_min(0.0)
        with torch.autocast(device_type=x.device.type, enabled=False):
            targets, offset = self._targets(y)
            labels = torch.arange(x.shape[-2], device=x.device) + offset
            labels = labels.expand(x.shape[:-1]).unsqueeze(-1)  # (..., B, 1): row i's positive column
            # every pair in one pass, the positives (the one place near-duplicate pairs are the aim)
            # exact from direct differences; a negative's Gram rounding is at most ~3e-3 in d
            # (float32, F.2-clipped points), far below what moves a logit
            d = pairwise_dist(x, targets, c, exact=labels)  # (..., B, M)
            pos = d.gather(-1, labels)  # (..., B, 1)
            logs = {"tau": tau.detach(), "margin": margin.detach(), "pos_dist": pos.mean().detach()}
            if targets.shape[-2] == 1:  # no negatives: a zero that keeps every input in the graph
                return (pos.sum() + tau + margin) * 0.0, logs
            # +m on every negative logit is −m on the positive one: a row's softmax sees only differences
            positive = torch.zeros_like(d).scatter_(-1, labels, 1.0)
            logits = -(d / tau.to(d.dtype) + margin.to(d.dtype) * positive)  # (..., B, M)
            # cross-entropy against the label-smoothed target (1 − ε)·onehot + ε/M, as F.cross_entropy's
            # label_smoothing, from the one-hot already at hand (its own smoothing is twice the ops);
            # equal B per group, so the mean over all rows is the mean of the per-group losses
            target = positive * (1 - self.label_smoothing) + self.label_smoothing / d.shape[-1]
            loss = -(torch.log_softmax(logits, dim=-1) * target).sum(-1).mean()
        return loss, logs
