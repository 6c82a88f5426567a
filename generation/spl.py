"""Structured prediction layer (SPL, Aksan et al. 2019, "dense" mode).

Joints are predicted along the kinematic tree: every joint has its own small MLP whose input is the
context vector and the predictions of *all* its ancestors (root first), so a joint can only depend
on the context and the joints above it. Joints at the same tree depth have the same number of
ancestors, so they are predicted together with batched weights: one step per depth, not per joint.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def tree_depths(parents: Sequence[int]) -> list[int]:
    """Depth of every node of a forest given by ``parents`` (-1 for roots); raise on bad trees."""
    n = len(parents)
    depths: list[int | None] = [None] * n
    for start in range(n):
        path, j = [], start
        while j != -1 and depths[j] is None:
            if j in path:
                raise ValueError(f"SPL parents {list(parents)} contain a cycle through joint {j}")
            if not -1 <= parents[j] < n:
                raise ValueError(f"SPL parent {parents[j]} of joint {j} is out of range for {n} joints")
            path.append(j)
            j = parents[j]
        base = -1 if j == -1 else depths[j]
        for k, node in enumerate(reversed(path)):
            depths[node] = base + 1 + k
    return depths  # type: ignore[return-value]


def ancestors(parents: Sequence[int], joint: int) -> list[int]:
    """Ancestors of ``joint``, root first."""
    chain = []
    while parents[joint] != -1:
        joint = parents[joint]
        chain.append(joint)
    return chain[::-1]


class _DepthLevel(nn.Module):
    """Batched per-joint MLPs for the J_d joints at depth d: ctx ⊕ d ancestor predictions -> hidden -> out."""

    def __init__(self, joints: list[int], ancestor_pos: list[list[int]], context_dim: int,
                 hidden: int, joint_dim: int) -> None:
        super().__init__()
        n, depth = len(joints), len(ancestor_pos[0])
        self.register_buffer("joints", torch.tensor(joints))  # (J_d,) joint ids, for inspection
        self.register_buffer("ancestor_pos", torch.tensor(ancestor_pos, dtype=torch.long).view(n, depth))
        bound_in = 1 / math.sqrt(context_dim + depth * joint_dim)  # nn.Linear's default init bound
        bound_out = 1 / math.sqrt(hidden)
        # context weights of all J_d joints side by side, so the context term is one GEMM
        self.w_ctx = nn.Parameter(torch.empty(context_dim, n, hidden).uniform_(-bound_in, bound_in))
        # roots have no ancestors: no (empty) weight, which DDP would flag as an unused parameter
        self.w_anc = (nn.Parameter(torch.empty(n, depth * joint_dim, hidden).uniform_(-bound_in, bound_in))
                      if depth else None)
        self.b_hidden = nn.Parameter(torch.empty(n, hidden).uniform_(-bound_in, bound_in))
        self.w_out = nn.Parameter(torch.empty(n, hidden, joint_dim).uniform_(-bound_out, bound_out))
        self.b_out = nn.Parameter(torch.empty(n, joint_dim).uniform_(-bound_out, bound_out))

    def forward(self, context: Tensor, known: Tensor | None) -> Tensor:  # known is None only at the roots
        """context (..., C), known (..., n_known, joint_dim) in depth order -> (..., J_d, joint_dim)."""
        h = (context @ self.w_ctx.flatten(1)).unflatten(-1, self.w_ctx.shape[1:]) + self.b_hidden  # (..., J_d, H)
        if self.w_anc is not None:
            anc = known[..., self.ancestor_pos, :].flatten(-2)  # (..., J_d, d * joint_dim)
            h = h + torch.einsum("...ja,jah->...jh", anc, self.w_anc)
        return torch.einsum("...jh,jho->...jo", torch.relu(h), self.w_out) + self.b_out


class StructuredPredictionLayer(nn.Module):
    """Predict J joints of ``joint_dim`` values from a context vector along the tree ``parents``.

    ``parents[j]`` is the parent of joint j within this layer's joints (-1 for a root). Every joint
    gets one hidden ReLU layer of width ``hidden`` (SPL paper configs: 1 layer of 64).
    """

    def __init__(self, parents: Sequence[int], context_dim: int, hidden: int = 64, joint_dim: int = 3) -> None:
        super().__init__()
        depths = tree_depths(parents)
        self.parents, self.joint_dim = list(parents), joint_dim
        order = sorted(range(len(parents)), key=lambda j: (depths[j], j))  # depth order
        position = {j: i for i, j in enumerate(order)}  # joint -> index in depth order
        self.levels = nn.ModuleList()
        for d in range(max(depths) + 1):
            joints = [j for j in order if depths[j] == d]
            anc = [[position[a] for a in ancestors(parents, j)] for j in joints]
            self.levels.append(_DepthLevel(joints, anc, context_dim, hidden, joint_dim))
        self.register_buffer("to_joint_order", torch.tensor([position[j] for j in range(len(parents))]))

    def forward(self, context: Tensor) -> Tensor:
        """(..., C) -> (..., J, joint_dim), joints in the order of ``parents``."""
        outs: list[Tensor] = []
        for level in self.levels:  # one step per tree depth, root level first
            outs.append(level(context, torch.cat(outs, dim=-2) if outs else None))
        return torch.cat(outs, dim=-2)[..., self.to_joint_order, :]
