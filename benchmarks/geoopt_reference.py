"""The Geo-Sign supplement's listings 4–9 re-implemented faithfully on geoopt.

This is the baseline `benchmarks/geometry.py` measures `geometry/` against: same algorithms,
same library calls, same control flow (including listing 5's host-side convergence test and
listing 8's margin sign). Not used by the package itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from geoopt import PoincareBall
from torch import Tensor, nn


def make_manifold(init_c: float = 1.5) -> PoincareBall:
    """Listing 9: one learnable-curvature ball shared by every hyperbolic layer."""
    return PoincareBall(c=init_c, learnable=True)


class HyperbolicProjection(nn.Module):
    """Listing 4: Linear → exp(log_scale) → manifold.expmap0(·, project=True)."""

    def __init__(self, dim_in: int, dim_out: int, manifold: PoincareBall) -> None:
        super().__init__()
        self.manifold = manifold
        self.proj = nn.Linear(dim_in, dim_out, bias=True)
        self.log_scale = nn.Parameter(torch.tensor(0.0, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        weight_dtype = self.proj.weight.dtype
        tangent = self.proj(x.to(weight_dtype)) * self.log_scale.to(weight_dtype).exp()
        return self.manifold.expmap0(tangent.float(), project=True).to(x.dtype)


def weighted_frechet_mean(points: Tensor, weights: Tensor, manifold: PoincareBall, max_iter: int = 50,
                          tol: float = 1e-5, eta: float = 1.0) -> Tensor:
    """Listing 5: Karcher flow μ ← exp_μ(η Σ w log_μ x) from the first point, stopping when
    every batch element moved less than `tol` (a host sync per step). points (N, B, D),
    weights (N, B) → (B, D)."""
    norm_weights = weights.unsqueeze(-1) if weights.ndim == 2 else weights.unsqueeze(-1).unsqueeze(-1)
    norm_weights = norm_weights / (norm_weights.sum(dim=0, keepdim=True) + 1e-8)
    mu = points[0].clone().detach()
    for _ in range(max_iter):
        mu_old = mu.clone()
        tangent = manifold.logmap(mu.unsqueeze(0), points)  # (N, B, D)
        step = (norm_weights * tangent).sum(dim=0)  # (B, D)
        mu_next = manifold.expmap(mu, eta * step, project=True)
        if (manifold.dist(mu_next, mu_old) < tol).all():
            mu = mu_next
            break
        mu = mu_next
    return mu


def pooled_text_embedding(tokens: Tensor, mask: Tensor, projection: HyperbolicProjection) -> Tensor:
    """Listing 6: masked mean of Euclidean token embeddings (B, L, E), then projection."""
    m = mask.unsqueeze(-1).float()
    mean = (tokens * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    return projection(mean.float())


def token_attention(manifold: PoincareBall, queries: Tensor, tokens: Tensor, mask: Tensor, W_key: Tensor,
                    b_key: Tensor, tau_attn: float = 0.1) -> tuple[Tensor, Tensor]:
    """Listing 7: queries (B, P, D) against hyperbolic tokens (B, L, D) through broadcast
    (B, P, L, D) tensors; keys (W ⊗ h) ⊕ b; softmax(−d/τ); weighted_midpoint of the tokens."""
    num_parts = queries.shape[1]
    q = queries.unsqueeze(2)  # (B, P, 1, D)
    kv = tokens.unsqueeze(1)  # (B, 1, L, D)
    keys = manifold.mobius_matvec(W_key.float(), kv)
    keys = manifold.mobius_add(keys, b_key.float())
    logits = -manifold.dist(q, keys)  # (B, P, L)
    attn_mask = mask.unsqueeze(1).expand(-1, num_parts, -1)
    logits = logits.masked_fill(~attn_mask, -torch.inf)
    weights = F.softmax(logits / tau_attn, dim=-1)
    values = kv.expand(-1, num_parts, -1, -1)  # (B, P, L, D)
    return manifold.weighted_midpoint(values, weights=weights, reducedim=[2], keepdim=False), weights


class HyperbolicContrastiveLoss(nn.Module):
    """Listing 8: logits −d/τ, τ = sigmoid(logit)·1.99 + 0.01, margin clamp_min(0) subtracted
    from the negatives, cross-entropy with label smoothing; d from a broadcast (B, B, D) dist."""

    def __init__(self, manifold: PoincareBall, initial_temp_logit: float = 0.0, initial_margin: float = 0.1,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.manifold = manifold
        self.temp_logit = nn.Parameter(torch.tensor(initial_temp_logit, dtype=torch.float32))
        self.margin_val = nn.Parameter(torch.tensor(initial_margin, dtype=torch.float32))
        self.loss_fct = nn.CrossEntropyLoss(label_smoothing=label_smoothing, ignore_index=-100)

    def forward(self, anchors: Tensor, targets: Tensor) -> dict[str, Tensor]:
        bsz = anchors.shape[0]
        sim = -self.manifold.dist(anchors.unsqueeze(1), targets.unsqueeze(0))  # (B, B)
        tau = torch.sigmoid(self.temp_logit) * 1.99 + 0.01
        logits = sim / tau
        margin = self.margin_val.clamp_min(0.0)
        positive = torch.eye(bsz, device=logits.device, dtype=torch.bool)
        logits = torch.where(positive, logits, logits - margin)
        loss = self.loss_fct(logits, torch.arange(bsz, device=anchors.device))
        return {"loss": loss, "sim_mean_pos": sim.diag().mean().detach(), "margin_used": margin.detach(),
                "temp_used": tau.detach()}
