"""Float32 Poincaré-ball geometry for Geo-Sign: pure functions, curvature and layers (no Lightning)."""
from .curvature import Curvature, inverse_softplus
from .frechet import frechet_mean, frechet_weights, weighted_midpoint, weighted_midpoints
from .nn import HyperbolicAttention, HyperbolicContrastiveLoss, HyperbolicProjection
from .poincare import (
    clip_tangent,
    clipped_expmap0,
    dist,
    dist0,
    expmap,
    expmap0,
    logmap,
    logmap0,
    mobius_add,
    mobius_affine,
    mobius_matvec,
    pairwise_dist,
    project,
)

__all__ = [
    "Curvature", "inverse_softplus",
    "project", "clip_tangent", "clipped_expmap0", "expmap0", "logmap0", "expmap", "logmap", "mobius_add", "mobius_matvec", "mobius_affine",
    "dist", "dist0", "pairwise_dist",
    "weighted_midpoint", "weighted_midpoints", "frechet_mean", "frechet_weights",
    "HyperbolicProjection", "HyperbolicAttention", "HyperbolicContrastiveLoss",
]
