"""The ball's curvature magnitude c > 0, learnable or fixed (supplement E.1, listing 9)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

C_FLOOR = 1e-4  # added to softplus: c stays > 0 even where softplus underflows (raw < −88 in float32)


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y, stable for large y (log(eᵞ − 1) = y + log(1 − e⁻ʸ))."""
    if y <= 0:
        raise ValueError(f"inverse_softplus: needs y > 0, got {y}")
    return y + math.log(-math.expm1(-y))


class Curvature(nn.Module):
    """c = softplus(raw) + C_FLOOR, with raw initialised so that `Curvature(1.5)()` is 1.5.

    geoopt's `PoincareBall(learnable=True)` uses the same softplus parameterisation; hypll's
    omits the inverse initialisation (asking for 1.0 gives 1.31). `raw` is a plain
    `nn.Parameter` when learnable (a hyperbolic-branch parameter: keep it out of weight decay),
    a buffer otherwise. `forward()` returns c as a 0-d tensor.
    """

    def __init__(self, init: float = 1.0, learnable: bool = True) -> None:
        super().__init__()
        if not init > C_FLOOR:
            raise ValueError(f"Curvature: init must be > {C_FLOOR}, got {init}")
        raw = torch.tensor(inverse_softplus(init - C_FLOOR), dtype=torch.float32)
        if learnable:
            self.raw = nn.Parameter(raw)
        else:
            self.register_buffer("raw", raw)
        self.learnable = learnable

    def forward(self) -> Tensor:
        return F.softplus(self.raw) + C_FLOOR

    def extra_repr(self) -> str:
        return f"c={self().item():.4g}, learnable={self.learnable}"
