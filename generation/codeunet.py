"""Denoisers over Pose-VQVAE code tokens: CodeUnet (PoseVQ-Diffusion §3.2, Eq. 10), the plain
Transformer of the Table 2a ablation, and the gloss encoder with its length head (§3.3).

Tokens are frames × parts flattened (`diffusion.frames_to_tokens`). CodeUnet works on frames:
the contracting path halves the frame rate at the first block of each level by letting every
second frame query the whole sequence; the expansive path repeats each frame twice as the query
and attends to the skip features of the matching contracting level; the middle is the decoder
(self-attention, cross-attention to the glosses, AdaLN on t). Any length works: sequences are
padded internally to a multiple of 2^levels frames, the padding masked out and cropped away.

The paper places the 6-block gloss encoder inside CodeUnet's middle; here it is its own module
(`GlossEncoder`) because its output is also the length head's input and is computed once per
sampling run rather than at every denoising step. Following the public G2P-DDM code, the
expansive path is conditioned like the middle decoder (cross-attention + AdaLN); the
contracting path is plain encoder blocks.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from generation.length import LengthHead
from generation.transformer import CodeEmbedding, PartHead, TimestepEmbedding, TransformerBlock, sinusoidal_encoding


class GlossEncoding(NamedTuple):
    """memory (B, G, d), mask (B, G) bool, length_logits (B, G, P)."""

    memory: torch.Tensor
    mask: torch.Tensor
    length_logits: torch.Tensor

    @property
    def cond(self) -> dict[str, torch.Tensor]:
        """The denoisers' conditioning keyword arguments."""
        return {"gloss_memory": self.memory, "gloss_mask": self.mask}


class GlossEncoder(nn.Module):
    """Gloss ids -> conditioning sequence (6 pre-LN blocks, §3.2) and per-gloss length logits.

    Gloss id 0 is <pad>. The classifier-free-guidance "empty" condition is a learned null
    vector in place of every valid gloss encoding (`unconditional`, `drop_prob`).
    """

    def __init__(
        self,
        num_glosses: int,
        d_model: int = 512,
        heads: int = 8,
        depth: int = 6,  # gloss encoder blocks, §3.2
        max_len: int = 300,  # P, the longest per-gloss length the head can predict
        ff_mult: int = 4,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.num_glosses = num_glosses
        self.d_model = d_model
        self.embed = nn.Embedding(num_glosses, d_model, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, heads, ff_mult, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        self.length_head = LengthHead(d_model, max_len)
        self.null = nn.Parameter(torch.randn(d_model) / math.sqrt(d_model))

    def forward(self, gloss_ids: torch.Tensor, gloss_mask: torch.Tensor, drop_prob: float = 0.0) -> GlossEncoding:
        """gloss_ids (B, G) long, gloss_mask (B, G) bool. With drop_prob > 0 each sample's memory
        is replaced by the null condition with that probability (CFG training); the length
        logits always come from the real encoding."""
        if gloss_ids.shape != gloss_mask.shape or gloss_ids.dim() != 2:
            raise ValueError(
                f"gloss_ids and gloss_mask must both be (B, G); got {tuple(gloss_ids.shape)}, {tuple(gloss_mask.shape)}"
            )
        if gloss_ids.min() < 0 or gloss_ids.max() >= self.num_glosses:
            raise ValueError(
                f"gloss ids must lie in [0, {self.num_glosses}), got [{gloss_ids.min()}, {gloss_ids.max()}]"
            )
        if not gloss_mask.any(dim=1).all():
            raise ValueError("every sample needs at least one gloss in gloss_mask")
        pos = sinusoidal_encoding(torch.arange(gloss_ids.shape[1], device=gloss_ids.device), self.d_model)
        h = self.drop(self.embed(gloss_ids) * math.sqrt(self.d_model) + pos)  # (B, G, d), Transformer scaling
        for block in self.blocks:
            h = block(h, gloss_mask)
        h = self.norm(h)
        memory = h
        if self.training and drop_prob > 0:
            dropped = torch.rand(h.shape[0], device=h.device) < drop_prob  # (B,)
            memory = torch.where(dropped[:, None, None], self.null.expand_as(h), h)
        return GlossEncoding(memory, gloss_mask, self.length_head(h))

    def unconditional(self, gloss_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The null condition with the same mask, as denoiser keyword arguments (for CFG sampling)."""
        memory = self.null.expand(*gloss_mask.shape, self.d_model)
        return {"gloss_memory": memory, "gloss_mask": gloss_mask}


def _check_tokens(x_t: torch.Tensor, t: torch.Tensor, token_mask: torch.Tensor, num_parts: int) -> None:
    if x_t.dim() != 2 or token_mask.shape != x_t.shape or t.shape != x_t.shape[:1]:
        shapes = f"{tuple(x_t.shape)}, {tuple(t.shape)}, {tuple(token_mask.shape)}"
        raise ValueError(f"expected x_t (B, N), t (B,), token_mask (B, N); got {shapes}")
    if x_t.shape[1] % num_parts:
        raise ValueError(f"{x_t.shape[1]} tokens do not split into frames of {num_parts} parts")


class CodeUnet(nn.Module):
    """The CodeUnet denoiser: (x_t, t, token_mask, gloss_memory, gloss_mask) -> x0 logits (B, N, K)."""

    def __init__(
        self,
        num_classes: int,  # K, codebook size per part
        num_parts: int = 3,  # pose, right hand, left hand (1 for the joint VQ-VAE)
        d_model: int = 512,  # d_model, §4
        heads: int = 8,
        num_levels: int = 2,  # halvings: temporal downsample 2^2 = 4, Supp. Table 2
        blocks_per_level: int = 2,  # N_depth = 2, §4
        middle_blocks: int = 2,  # decoder blocks, §3.2
        ff_mult: int = 4,
        dropout: float = 0.1,
        num_timesteps: int = 100,  # T
    ):
        super().__init__()
        if blocks_per_level < 1 or num_levels < 0:
            raise ValueError(f"need blocks_per_level >= 1 and num_levels >= 0, got {blocks_per_level}, {num_levels}")
        self.num_parts = num_parts
        self.num_levels = num_levels
        self.pad_id = num_classes + 1
        self.embed = CodeEmbedding(num_classes, num_parts, d_model)
        self.time = TimestepEmbedding(num_timesteps, d_model)

        def level(conditioned: bool) -> nn.ModuleList:
            return nn.ModuleList(
                TransformerBlock(d_model, heads, ff_mult, dropout, cross_attention=conditioned, adaptive=conditioned)
                for _ in range(blocks_per_level)
            )

        self.down = nn.ModuleList(level(False) for _ in range(num_levels + 1))
        self.middle = nn.ModuleList(
            TransformerBlock(d_model, heads, ff_mult, dropout, cross_attention=True, adaptive=True)
            for _ in range(middle_blocks)
        )
        self.up = nn.ModuleList(level(True) for _ in range(num_levels + 1))
        self.norm = nn.LayerNorm(d_model)
        self.head = PartHead(d_model, num_classes, num_parts)

    def _attend(
        self, block: TransformerBlock, q: torch.Tensor, kv: torch.Tensor | None, kv_mask: torch.Tensor, **cond
    ) -> torch.Tensor:
        """One block on frame tensors: q (B, Tq, P, d) attends to kv (B, Tk, P, d) (q itself if None)."""
        key_mask = kv_mask.repeat_interleave(self.num_parts, dim=1)  # frames -> tokens (B, Tk·P)
        out = block(q.flatten(1, 2), key_mask, None if kv is None else kv.flatten(1, 2), **cond)
        return out.view_as(q)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        token_mask: torch.Tensor,
        gloss_memory: torch.Tensor,
        gloss_mask: torch.Tensor,
    ) -> torch.Tensor:
        """x_t (B, N) long tokens, t (B,) long in [0, T], token_mask (B, N) bool, gloss_memory
        (B, G, d), gloss_mask (B, G) bool -> logits (B, N, K) over each token's part codebook."""
        _check_tokens(x_t, t, token_mask, self.num_parts)
        batch, num_tokens = x_t.shape
        frames = num_tokens // self.num_parts
        factor = 2**self.num_levels
        padded = -(-frames // factor) * factor  # round up so every halving is exact
        x = F.pad(x_t, (0, (padded - frames) * self.num_parts), value=self.pad_id)
        frame_mask = token_mask.view(batch, frames, self.num_parts).any(dim=-1)  # (B, T)
        frame_mask = F.pad(frame_mask, (0, padded - frames), value=False)  # (B, T')
        h = self.embed(x).unflatten(1, (padded, self.num_parts))  # (B, T', P, d)
        h = self.trunk(h, frame_mask, gloss_memory, gloss_mask, self.time(t))
        return self.head(self.norm(h.flatten(1, 2)))[:, :num_tokens]  # crop the internal padding

    def trunk(
        self,
        h: torch.Tensor,
        frame_mask: torch.Tensor,
        gloss_memory: torch.Tensor,
        gloss_mask: torch.Tensor,
        t_emb: torch.Tensor,
    ) -> torch.Tensor:
        """The U of CodeUnet on embedded frames h (B, T', P, d), T' a multiple of 2^levels -> (B, T', P, d).

        Kept apart from the embeddings (whose id checks read tensor values) and the per-part head
        (boolean indexing), which break a `torch.compile` graph: `compile_trunk` compiles this.
        """
        cond = {"memory": gloss_memory, "memory_mask": gloss_mask, "t_emb": t_emb}
        skips = []
        for lvl, blocks in enumerate(self.down):
            for i, block in enumerate(blocks):
                if lvl > 0 and i == 0:  # downsample: every second frame queries the full sequence
                    h = self._attend(block, h[:, ::2], h, frame_mask)  # (B, T'/2^lvl, P, d)
                    frame_mask = frame_mask[:, ::2]
                else:
                    h = self._attend(block, h, None, frame_mask)
            skips.append((h, frame_mask))
        for block in self.middle:
            h = self._attend(block, h, None, frame_mask, **cond)
        for lvl in reversed(range(self.num_levels + 1)):
            skip, frame_mask = skips[lvl]
            for i, block in enumerate(self.up[lvl]):
                if i == 0:  # upsample (Eq. 10): Q_n = h_{n//2}, K = V = the skip features
                    q = h.repeat_interleave(skip.shape[1] // h.shape[1], dim=1)  # (B, T'/2^lvl, P, d)
                    h = self._attend(block, q, skip, frame_mask, **cond)
                else:
                    h = self._attend(block, h, None, frame_mask, **cond)
        return h

    def compile_trunk(self, **compile_kwargs) -> None:
        """`torch.compile` the trunk in place (state_dict keys unchanged). Dynamic shapes by default:
        sampled lengths and batch sizes vary, and one graph then serves them all."""
        self.trunk = torch.compile(self.trunk, **({"dynamic": True} | compile_kwargs))


class TransformerDenoiser(nn.Module):
    """Plain full-resolution Transformer with CodeUnet's interface (the Table 2a ablation).

    depth = 14 matches the default CodeUnet's block count (3 levels × 2 × 2 paths + 2 middle).
    """

    def __init__(
        self,
        num_classes: int,
        num_parts: int = 3,
        d_model: int = 512,
        heads: int = 8,
        depth: int = 14,
        ff_mult: int = 4,
        dropout: float = 0.1,
        num_timesteps: int = 100,
    ):
        super().__init__()
        self.num_parts = num_parts
        self.embed = CodeEmbedding(num_classes, num_parts, d_model)
        self.time = TimestepEmbedding(num_timesteps, d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, heads, ff_mult, dropout, cross_attention=True, adaptive=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = PartHead(d_model, num_classes, num_parts)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        token_mask: torch.Tensor,
        gloss_memory: torch.Tensor,
        gloss_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Same contract as `CodeUnet.forward`: -> logits (B, N, K)."""
        _check_tokens(x_t, t, token_mask, self.num_parts)
        h = self.embed(x_t)  # (B, N, d)
        t_emb = self.time(t)
        for block in self.blocks:
            h = block(h, token_mask, memory=gloss_memory, memory_mask=gloss_mask, t_emb=t_emb)
        return self.head(self.norm(h))
