"""Geo-Sign's hyperbolic regulariser as a plain module: pose parts and text into the Poincaré ball,
aligned by a contrastive loss (supplement C.2), plus the α loss blend (supplement E.2, Eq. 9).

Only training runs it: translation at inference is mT5 alone.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from datamodules.keypoints import PART_NAMES
from geometry import (
    Curvature,
    HyperbolicAttention,
    HyperbolicContrastiveLoss,
    HyperbolicProjection,
    frechet_mean,
    frechet_weights,
)

MODES = ("pooled", "token")
# torch.compile options of the (training-only) branch, `compile_hyperbolic`: one graph (no break,
# so no hidden host sync) and automatic dynamic shapes: a changed B, T or L recompiles once as
# dynamic instead of once per shape. Not dynamic=True from the first call: torch 2.13's dynamo then
# traces the geometry's module-level float constants as symbolic inputs and cannot lift them into
# a custom autograd.Function called twice in one graph (the projections' `_Expmap0`).
COMPILE_OPTIONS = {"fullgraph": True, "dynamic": None}


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of (..., T, C) over the True positions of mask (..., T) (broadcasting) -> (..., C)."""
    keep = mask[..., None].to(x.dtype)
    return (x * keep).sum(-2) / keep.sum(-2).clamp_min(1.0)  # clamp: an all-padding row gives 0, not NaN


class HyperbolicBranch(nn.Module):
    """Pooled (Fréchet mean of parts vs pooled text) or token (part queries attend to text tokens).

    Args:
        mode: "pooled" or "token" (supplement C.2.1 / C.2.2).
        part_dim: width of each ST-GCN part stream (256).
        text_dim: width of mT5's decoder states (d_model).
        hyp_dim: dimension of the ball (d_hyp = 256, Table 3).
        init_c: initial curvature (c_init = 1.5, Table 3); learnable unless `learn_c` is False.
        label_smoothing: of the contrastive InfoNCE (label_smoothing_hyp = 0.2, Table 3).
        frechet_temperature: λ_w of the part weights, Eq. 4 (1.0 in the paper).
        frechet_iters: Newton steps of the Fréchet mean (pooled mode; default `geometry.frechet.FRECHET_ITERS`).
        init_scale: initial tangent scale s of every projection (listing 4: 1.0).
        gather_negatives: contrast against the targets of every DDP rank.
    """

    def __init__(self, mode: str = "token", part_dim: int = 256, text_dim: int = 768,
                 hyp_dim: int = 256,  # d_hyp, Table 3
                 init_c: float = 1.5,  # c_init, Table 3
                 learn_c: bool = True,
                 label_smoothing: float = 0.2,  # label_smoothing_hyp, Table 3
                 frechet_temperature: float = 1.0,  # λ_w, Eq. 4
                 frechet_iters: int | None = None,
                 init_scale: float = 1.0,  # s_p at initialisation, listing 4
                 gather_negatives: bool = False) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"hyperbolic mode must be one of {MODES} (or null for the baseline), got {mode!r}")
        if frechet_temperature <= 0:
            raise ValueError(f"frechet_temperature (λ_w, Eq. 4) must be > 0, got {frechet_temperature}")
        self.mode = mode
        self.frechet_temperature = frechet_temperature
        self.frechet_iters = frechet_iters
        self.curvature = Curvature(init_c, learnable=learn_c)
        # one projection per part (Eq. 2's W_p, s_p), evaluated for all parts in one batched pass
        self.part_proj = HyperbolicProjection(part_dim, hyp_dim, self.curvature, init_scale, groups=len(PART_NAMES))
        self.text_proj = HyperbolicProjection(text_dim, hyp_dim, self.curvature, init_scale)
        self.attention = HyperbolicAttention(hyp_dim, self.curvature) if mode == "token" else None
        self.contrastive = HyperbolicContrastiveLoss(self.curvature, label_smoothing=label_smoothing,
                                                     gather_negatives=gather_negatives)

    @staticmethod
    def pool_parts(part_features: dict[str, Tensor], frame_mask: Tensor) -> Tensor:
        """Masked temporal mean of each part stream: (B, P, part_dim). The mean skips padded
        frames (the released code averages them in)."""
        parts = torch.stack([part_features[p] for p in PART_NAMES], dim=1)  # (B, P, T, part_dim)
        return masked_mean(parts, frame_mask[:, None])

    def project_parts(self, pooled: Tensor, c: Tensor | None = None,
                      with_dist0: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """h_p = HyperbolicProjection_p(pooled part p): (B, P, part_dim) -> (B, P, hyp_dim), all
        parts in one grouped pass; with `with_dist0` also d(0, h_p) (B, P)."""
        out = self.part_proj(pooled.transpose(0, 1), c, with_dist0=with_dist0)
        if not with_dist0:
            return out.transpose(0, 1)
        return out[0].transpose(0, 1), out[1].transpose(0, 1)

    def part_embeddings(self, part_features: dict[str, Tensor], frame_mask: Tensor, c: Tensor | None = None,
                        with_dist0: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, P, hyp_dim) points of the parts in the ball (and d(0, h_p) (B, P) with `with_dist0`)."""
        return self.project_parts(self.pool_parts(part_features, frame_mask), c, with_dist0)

    def forward(self, part_features: dict[str, Tensor], frame_mask: Tensor, decoder_hidden: Tensor,
                target_mask: Tensor, diagnostics: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """part_features {p: (B, T, part_dim)}, decoder_hidden (B, L, text_dim) -> (L_hyp, logs).
        `diagnostics=False` skips the per-part distances to the origin (the logs' `dist0_<part>`)
        and τ_attn on the steps where no logger would receive them."""
        c = self.curvature()  # once for every layer below
        # d(0, h_p) comes exact from the projection's clipped tangent: Eq. 4's weights (pooled) and
        # the logs' dist0_<part>, without `dist0`'s artanh and its backward
        if self.mode == "pooled" or diagnostics:
            h_parts, d0_parts = self.part_embeddings(part_features, frame_mask, c, with_dist0=True)  # (B, P, D), (B, P)
        else:
            h_parts = self.part_embeddings(part_features, frame_mask, c)
        logs = {}
        if diagnostics:
            logs = {f"dist0_{p}": d for p, d in zip(PART_NAMES, d0_parts.detach().mean(0).unbind())}
        if self.mode == "pooled":
            w = frechet_weights(h_parts, c, dim=1, temperature=self.frechet_temperature, d0=d0_parts)  # (B, P), Eq. 4
            kwargs = {} if self.frechet_iters is None else {"iters": self.frechet_iters}
            pose = frechet_mean(h_parts, w, c, dim=1, **kwargs)  # (B, D)
            text = self.text_proj(masked_mean(decoder_hidden, target_mask), c)  # (B, D)
            loss, stats = self.contrastive(pose, text, c)
        else:
            tokens = self.text_proj(decoder_hidden, c)  # (B, L, D)
            contexts, _ = self.attention(h_parts, tokens, target_mask, c)  # (B, P, D)
            # each part contrasts against its own contexts; averaged over parts, C.2.2 step 4
            loss, stats = self.contrastive(h_parts.transpose(0, 1), contexts.transpose(0, 1), c)  # (P, B, D) each
            if diagnostics:
                logs["tau_attn"] = self.attention.tau_attn.detach()
        logs.update(stats)
        logs["curvature"] = c
        return loss, logs


class LossBlend(nn.Module):
    """α = clamp(α_init + 0.1·progress + 0.2·σ(logit_α), 0.1, 1.0) (supplement Eq. 9).

    `progress` is optimizer steps done / total optimizer steps, in [0, 1]. The released code
    divides micro-batches by optimizer steps, so with gradient accumulation 8 α hits the clamp a
    third of the way in and the regulariser switches off; callers here pass real optimizer steps.
    """

    def __init__(self, alpha_init: float = 0.7) -> None:  # α_init, Table 3
        super().__init__()
        self.alpha_init = alpha_init
        self.logit = nn.Parameter(torch.tensor(0.0))  # logit_α, learnable (listing 10)

    def forward(self, progress: float) -> Tensor:
        progress = min(max(progress, 0.0), 1.0)
        return (self.alpha_init + 0.1 * progress + 0.2 * torch.sigmoid(self.logit)).clamp(0.1, 1.0)
