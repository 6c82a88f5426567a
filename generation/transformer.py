"""Transformer pieces shared by the production models (CodeUnet, the plain Transformer denoiser,
the gloss encoder, the autoregressive baseline).

Pre-LN blocks whose self-attention may take a *different* key/value sequence than its queries
(CodeUnet's down/upsampling, §3.2 Eq. 10), optional cross-attention to a memory, optional
AdaLN(h, t) = a_t · LayerNorm(h) + b_t conditioning on a timestep embedding, and a key/value cache
for incremental decoding. Code tokens are embedded and read out per body part, so one codebook
index space [0, K) can serve the three Pose-VQVAE codebooks (pose, right hand, left hand).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Cache = dict[str, torch.Tensor]


def sinusoidal_encoding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Vaswani et al.'s sin/cos encoding of integer positions (...,) -> (..., dim), any length."""
    if dim % 2:
        raise ValueError(f"sinusoidal_encoding needs an even dim, got {dim}")
    # frequencies 1 / 10000^(2i/dim), the original Transformer's constant
    freqs = torch.exp(
        torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    angles = positions.to(torch.float32).unsqueeze(-1) * freqs  # (..., dim/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., dim) interleaved


def key_mask_to_attn_mask(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, Nk) bool key mask (True = attend) -> SDPA boolean mask (B, 1, 1, Nk).

    A row with no valid key (a fully padded sample) attends to every key instead: softmax over
    an empty set is NaN, and that row's output is never read.
    """
    if key_mask is None:
        return None
    return (key_mask | ~key_mask.any(dim=-1, keepdim=True))[:, None, None, :]


def with_causal(mask: torch.Tensor | None, nq: int, nk: int, device: torch.device) -> torch.Tensor:
    """AND a causal mask in, with the Nq queries being the *last* Nq of the Nk keys (KV cache)."""
    causal = torch.ones(nq, nk, dtype=torch.bool, device=device).tril(nk - nq)[None, None]  # (1, 1, Nq, Nk)
    return causal if mask is None else mask & causal


class Attention(nn.Module):
    """Multi-head attention of queries `x` over `context` (defaults to `x`), via SDPA.

    No dropout on the attention weights: on CPU it costs a Bernoulli draw per (query, key)
    pair, a fifth of a training step; the blocks drop out residual branches instead.
    """

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.heads = heads
        self.to_q = nn.Linear(d_model, d_model)
        self.to_kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, H, N, d/H)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: Cache | None = None,
        static_context: bool = False,
    ) -> torch.Tensor:
        """x (B, Nq, d), context (B, Nk, d), key_mask (B, Nk) bool -> (B, Nq, d).

        With `cache`, new keys/values are appended to the cached ones (self-attention decoding);
        with `static_context` they are computed once from `context` and reused (cross-attention).
        `key_mask` always covers the full key sequence, cache included.
        """
        q = self._split(self.to_q(x))  # (B, H, Nq, d/H)
        if cache is not None and static_context and "k" in cache:  # memory keys: computed on step 1
            k, v = cache["k"], cache["v"]
        else:
            k, v = (self._split(z) for z in self.to_kv(x if context is None else context).chunk(2, dim=-1))
            if cache is not None and not static_context and "k" in cache:  # append this step's keys
                k, v = torch.cat((cache["k"], k), dim=2), torch.cat((cache["v"], v), dim=2)
            if cache is not None:
                cache["k"], cache["v"] = k, v
        if key_mask is not None and key_mask.shape[-1] != k.shape[2]:
            raise ValueError(f"key_mask covers {key_mask.shape[-1]} keys but attention has {k.shape[2]}")
        mask = key_mask_to_attn_mask(key_mask)
        if causal:
            mask = with_causal(mask, q.shape[2], k.shape[2], q.device)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(h.transpose(1, 2).flatten(-2))  # (B, Nq, d)


class TimestepEmbedding(nn.Module):
    """Learned embedding of the diffusion step t in [0, T] (VQ-Diffusion's 'adalayernorm_abs')."""

    def __init__(self, num_timesteps: int, d_model: int):
        super().__init__()
        self.num_timesteps = num_timesteps
        self.embed = nn.Embedding(num_timesteps + 1, d_model)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (B,) long -> (B, d)."""
        if t.dtype != torch.long or t.min() < 0 or t.max() > self.num_timesteps:
            raise ValueError(f"timesteps must be long in [0, {self.num_timesteps}], got {t.dtype} {t.tolist()}")
        return self.embed(t)


class AdaLayerNorm(nn.Module):
    """AdaLN(h, t) = a_t · LayerNorm(h) + b_t with (a_t, b_t) a linear map of the step embedding (§3.2)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.to_scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 2 * d_model))
        # start as a plain LayerNorm (a_t = 1, b_t = 0) so conditioning is learned from a stable point
        nn.init.zeros_(self.to_scale_shift[1].weight)
        with torch.no_grad():
            self.to_scale_shift[1].bias.copy_(torch.cat((torch.ones(d_model), torch.zeros(d_model))))

    def forward(self, h: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """h (B, N, d), t_emb (B, d) -> (B, N, d)."""
        scale, shift = self.to_scale_shift(t_emb).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, d) each
        return scale * self.norm(h) + shift


class TransformerBlock(nn.Module):
    """Pre-LN block: (self-)attention [+ cross-attention to a memory] + feed-forward.

    `adaptive=True` swaps every LayerNorm for AdaLN conditioned on a timestep embedding.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        ff_mult: int = 4,
        dropout: float = 0.0,
        cross_attention: bool = False,
        adaptive: bool = False,
    ):
        super().__init__()
        self.adaptive = adaptive
        norm = (lambda: AdaLayerNorm(d_model)) if adaptive else (lambda: nn.LayerNorm(d_model))
        self.norm_attn = norm()
        self.attn = Attention(d_model, heads)
        self.norm_cross = norm() if cross_attention else None
        self.cross = Attention(d_model, heads) if cross_attention else None
        self.norm_ff = norm()
        self.ff = nn.Sequential(
            nn.Linear(d_model, ff_mult * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * d_model, d_model),
        )
        self.drop = nn.Dropout(dropout)

    def _norm(self, norm: nn.Module, h: torch.Tensor, t_emb: torch.Tensor | None) -> torch.Tensor:
        return norm(h, t_emb) if self.adaptive else norm(h)

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        t_emb: torch.Tensor | None = None,
        causal: bool = False,
        cache: dict[str, Cache] | None = None,
    ) -> torch.Tensor:
        """x (B, Nq, d) queries; context (B, Nk, d) keys/values of the first attention (defaults
        to x; `key_mask` (B, Nk) masks them); memory (B, G, d) for cross-attention -> (B, Nq, d)."""
        if self.adaptive and t_emb is None:
            raise ValueError("an AdaLN block needs the timestep embedding t_emb")
        if (self.cross is not None) != (memory is not None):
            raise ValueError("pass `memory` exactly when the block was built with cross_attention=True")
        h = self._norm(self.norm_attn, x, t_emb)
        ctx = None if context is None else self._norm(self.norm_attn, context, t_emb)
        x = x + self.drop(self.attn(h, ctx, key_mask, causal, None if cache is None else cache.setdefault("self", {})))
        if self.cross is not None:
            h = self._norm(self.norm_cross, x, t_emb)
            cross_cache = None if cache is None else cache.setdefault("cross", {})
            x = x + self.drop(self.cross(h, memory, memory_mask, cache=cross_cache, static_context=True))
        return x + self.drop(self.ff(self._norm(self.norm_ff, x, t_emb)))


class CodeEmbedding(nn.Module):
    """Embeds a flattened frames × parts token sequence: token n is part n % P of frame n // P.

    Each part owns K + 2 rows (K codes, [MASK], [PAD]), so part p's code c and part q's code c
    are different vectors even when the codebooks share the index space [0, K). A sinusoidal
    encoding of the frame index carries time.
    """

    def __init__(self, num_classes: int, num_parts: int, d_model: int):
        super().__init__()
        self.num_states = num_classes + 2  # K codes + [MASK] + [PAD]
        self.num_parts = num_parts
        self.d_model = d_model
        self.embed = nn.Embedding(num_parts * self.num_states, d_model)

    def forward(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """tokens (B, N) long in [0, K + 2), the first at flat position `offset` -> (B, N, d)."""
        if tokens.min() < 0 or tokens.max() >= self.num_states:
            raise ValueError(f"token ids must lie in [0, {self.num_states}), got [{tokens.min()}, {tokens.max()}]")
        pos = torch.arange(offset, offset + tokens.shape[1], device=tokens.device)  # (N,)
        part = pos % self.num_parts
        return self.embed(part * self.num_states + tokens) + sinusoidal_encoding(pos // self.num_parts, self.d_model)


class PartHead(nn.Module):
    """Per-part linear read-out: the token of part p is scored against codebook p only."""

    def __init__(self, d_model: int, num_classes: int, num_parts: int):
        super().__init__()
        self.num_parts = num_parts
        self.heads = nn.ModuleList(nn.Linear(d_model, num_classes) for _ in range(num_parts))

    def forward(self, h: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """h (B, N, d), the first token at flat position `offset` -> logits (B, N, K)."""
        part = torch.arange(offset, offset + h.shape[1], device=h.device) % self.num_parts  # (N,)
        logits = [head(h[:, part == p]) for p, head in enumerate(self.heads)]  # autocast may make them bf16
        out = logits[0].new_empty(*h.shape[:2], self.heads[0].out_features)
        for p, scores in enumerate(logits):
            out[:, part == p] = scores
        return out
