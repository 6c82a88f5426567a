"""PoseVQ-AR: an autoregressive Transformer decoder over the Pose-VQVAE codes (Table 1's AR row).

Same token layout as the diffusion (frames × parts flattened, [PAD] = K + 1); the start token is
the [MASK] id K, which never occurs otherwise in this model. Inputs are the targets shifted right
by one; `CodeEmbedding` looks each input up in the table of the *target's* part, which is a
fixed relabelling of its own part, so the lookup stays one-to-one. The length comes from the
length head (the sampler decodes exactly the requested tokens). Decoding uses a key/value cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from generation.diffusion import Generated
from generation.transformer import CodeEmbedding, PartHead, TransformerBlock


class AutoregressiveDecoder(nn.Module):
    """Causal decoder with cross-attention to the gloss encoding: p(x_n | x_<n, glosses)."""

    def __init__(
        self,
        num_classes: int,
        num_parts: int = 3,
        d_model: int = 512,
        heads: int = 8,
        depth: int = 6,
        ff_mult: int = 4,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.start_id = num_classes  # the [MASK] id doubles as the start token
        self.pad_id = num_classes + 1
        self.embed = CodeEmbedding(num_classes, num_parts, d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, heads, ff_mult, dropout, cross_attention=True) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = PartHead(d_model, num_classes, num_parts)

    def forward(
        self, tokens: torch.Tensor, token_mask: torch.Tensor, gloss_memory: torch.Tensor, gloss_mask: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: tokens (B, N) targets -> logits (B, N, K), position n seeing tokens < n."""
        if tokens.shape != token_mask.shape or tokens.dim() != 2:
            raise ValueError(
                f"tokens and token_mask must both be (B, N); got {tuple(tokens.shape)}, {tuple(token_mask.shape)}"
            )
        tokens = tokens.masked_fill(~token_mask, self.pad_id)
        inputs = F.pad(tokens[:, :-1], (1, 0), value=self.start_id)  # (B, N) shifted right
        key_mask = F.pad(token_mask[:, :-1], (1, 0), value=True)  # the start token is always valid
        h = self.embed(inputs)
        for block in self.blocks:
            h = block(h, key_mask, memory=gloss_memory, memory_mask=gloss_mask, causal=True)
        return self.head(self.norm(h))

    def loss(
        self, tokens: torch.Tensor, token_mask: torch.Tensor, gloss_memory: torch.Tensor, gloss_mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Next-token cross-entropy averaged over the tokens inside `token_mask`."""
        logits = self(tokens, token_mask, gloss_memory, gloss_mask)
        target = tokens.masked_fill(~token_mask, -100)  # -100: cross_entropy's ignore_index
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100)
        return loss, {"loss_ce": loss.detach()}

    @torch.no_grad()
    def generate(
        self,
        gloss_memory: torch.Tensor,
        gloss_mask: torch.Tensor,
        token_mask: torch.Tensor,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Generated:
        """Decode the tokens inside `token_mask` (B, N) left to right, one cached step per token.

        temperature 0 is greedy; otherwise sample from softmax(logits / temperature). Keys and
        values of past tokens and of the gloss memory are cached per block.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        batch, num_tokens = token_mask.shape
        caches: list[dict] = [{} for _ in self.blocks]
        tokens = torch.full((batch, num_tokens), self.pad_id, dtype=torch.long, device=token_mask.device)
        token_log_probs = torch.zeros(batch, num_tokens, device=token_mask.device)
        prev = torch.full((batch, 1), self.start_id, dtype=torch.long, device=token_mask.device)
        for n in range(num_tokens):
            h = self.embed(prev, offset=n)  # (B, 1, d)
            key_mask = F.pad(token_mask[:, :n], (1, 0), value=True)  # (B, n + 1), as in `forward`
            for block, cache in zip(self.blocks, caches):
                h = block(h, key_mask, memory=gloss_memory, memory_mask=gloss_mask, causal=True, cache=cache)
            log_probs = torch.log_softmax(self.head(self.norm(h), offset=n).float().squeeze(1), dim=-1)  # (B, K)
            if temperature == 0:
                choice = log_probs.argmax(dim=-1)
            else:
                choice = torch.multinomial((log_probs / temperature).softmax(dim=-1), 1, generator=generator).squeeze(1)
            valid = token_mask[:, n]
            tokens[:, n] = torch.where(valid, choice, self.pad_id)
            token_log_probs[:, n] = log_probs.gather(-1, choice[:, None]).squeeze(1) * valid
            prev = tokens[:, n : n + 1]
        score = token_log_probs.sum(dim=1) / token_mask.sum(dim=1).clamp(min=1)  # clamp: empty rows score 0
        return Generated(tokens, token_log_probs, score)
