"""PoseVQ-MP: Mask-Predict (Ghazvininejad et al. 2019) on the Pose-VQVAE codes (Table 1).

The mask-only special case of the discrete diffusion (γ̄_T = 1, no uniform replacement), with the
same token layout ([MASK] = K, [PAD] = K + 1) and any denoiser with CodeUnet's interface. The
denoiser's timestep input carries the masked fraction r as t = ⌈r·T⌉ (absorbing diffusion with
γ̄_t = t/T), so one trained network serves both this sampler and its training loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from generation.diffusion import Denoiser, Generated


class MaskPredict(nn.Module):
    """Mask-Predict training loss and iterative re-masking decoder."""

    def __init__(self, num_classes: int, num_timesteps: int = 100, iterations: int = 10):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.num_classes = num_classes
        self.mask_id = num_classes
        self.pad_id = num_classes + 1
        self.num_timesteps = num_timesteps
        self.iterations = iterations  # decoding iterations, Mask-Predict's default 10

    def _timestep(self, num_masked: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Masked fraction -> t = ⌈r·T⌉ in [1, T] (B,)."""
        ratio = num_masked.float() / lengths.clamp(min=1).float()  # clamp: empty rows get t = 1
        return (ratio * self.num_timesteps).ceil().long().clamp(1, self.num_timesteps)

    def loss(
        self,
        denoiser: Denoiser,
        x0: torch.Tensor,
        token_mask: torch.Tensor,
        cond: dict,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mask a uniform number in [1, L] of each sequence's tokens at random positions and
        score the masked ones (cross-entropy averaged over masked tokens)."""
        if x0.shape != token_mask.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and token_mask {tuple(token_mask.shape)} differ")
        lengths = token_mask.sum(dim=1)  # (B,)
        u = torch.rand(lengths.shape, generator=generator, device=x0.device)
        num_masked = (u * lengths).floor().long() + 1  # uniform on [1, L]
        order = torch.rand(x0.shape, generator=generator, device=x0.device)
        order = order.masked_fill(~token_mask, 2.0)  # 2 > any rand: padding is never masked
        rank = order.argsort(dim=1).argsort(dim=1)
        masked = (rank < num_masked[:, None]) & token_mask  # (B, N)
        x_in = x0.masked_fill(masked, self.mask_id).masked_fill(~token_mask, self.pad_id)
        logits = denoiser(x_in, self._timestep(num_masked, lengths), token_mask, **cond)  # (B, N, K)
        target = x0.masked_fill(~masked, -100)  # -100: cross_entropy's ignore_index
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100)
        accuracy = (logits.argmax(-1) == x0)[masked].float().mean()
        return loss, {"loss_ce": loss.detach(), "masked_acc": accuracy.detach()}

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        cond: dict,
        token_mask: torch.Tensor,
        iterations: int | None = None,
    ) -> Generated:
        """Predict every token, then for i = 1..I−1 re-mask the L·(I−i)/I least confident tokens
        and re-predict them (only re-predicted tokens update their confidence)."""
        iterations = self.iterations if iterations is None else iterations
        lengths = token_mask.sum(dim=1)  # (B,)
        tokens = torch.full(token_mask.shape, self.mask_id, dtype=torch.long, device=token_mask.device)
        tokens = tokens.masked_fill(~token_mask, self.pad_id)
        confidence = torch.zeros(token_mask.shape, device=token_mask.device)
        num_masked = lengths
        for i in range(iterations):
            t = self._timestep(num_masked, lengths)
            log_probs = torch.log_softmax(denoiser(tokens, t, token_mask, **cond).float(), dim=-1)
            best_lp, best = log_probs.max(dim=-1)  # (B, N)
            update = tokens == self.mask_id
            tokens = torch.where(update, best, tokens)
            confidence = torch.where(update, best_lp, confidence)
            if i + 1 == iterations:
                break
            num_masked = (lengths * (iterations - i - 1)) // iterations  # Mask-Predict's linear decay
            rank = confidence.masked_fill(~token_mask, float("inf")).argsort(dim=1).argsort(dim=1)
            tokens = torch.where((rank < num_masked[:, None]) & token_mask, self.mask_id, tokens)
        token_log_probs = confidence * token_mask
        score = token_log_probs.sum(dim=1) / lengths.clamp(min=1)  # clamp: empty rows score 0
        return Generated(tokens, token_log_probs, score)
