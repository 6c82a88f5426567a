"""The three generators of PoseVQ-Diffusion's Table 1 behind one interface: glosses -> Pose-VQVAE
code tokens (frames × parts flattened, `diffusion.frames_to_tokens`).

- `DiffusionGenerator`: mask-and-replace discrete diffusion (Eqs. 4-9) with a CodeUnet or the
  Transformer of Table 2a; full or fast sampling, top-r truncation, classifier-free guidance
  (PoseVQ-Diffusion).
- `MaskPredictGenerator`: Mask-Predict on the same denoisers (PoseVQ-MP).
- `AutoregressiveGenerator`: a causal decoder, KV-cached (PoseVQ-AR).

Each holds the shared gloss encoder with its length head (§3.3) and its own network, and offers
`encode` (glosses -> `GlossEncoding`), `loss` (the method's code loss), `sample` (a `Generated` of
the tokens inside a token mask) and `steps` (network evaluations per sequence). The length
prediction and decoding of several length candidates stay outside (`generation.length`): they are
the same for all three.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from generation.autoregressive import AutoregressiveDecoder
from generation.codeunet import GlossEncoder, GlossEncoding, TransformerDenoiser
from generation.diffusion import Denoiser, Generated, MaskReplaceDiffusion
from generation.mask_predict import MaskPredict


class CodeGenerator(nn.Module, ABC):
    """Gloss encoder plus one method's network; see the module docstring for the interface."""

    table_name: str  # the method's row in Table 1

    def __init__(self, encoder: GlossEncoder, cond_drop_prob: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.cond_drop_prob = cond_drop_prob
        # The null condition only learns from dropped conditions: frozen when none are dropped,
        # so no parameter sits outside the loss (DDP refuses unused parameters).
        encoder.null.requires_grad_(cond_drop_prob > 0)

    @property
    def name(self) -> str:
        """The row name of Table 1 / 2a."""
        return self.table_name

    def encode(self, gloss_ids: Tensor, gloss_mask: Tensor) -> GlossEncoding:
        """gloss_ids, gloss_mask (B, G) -> memory (B, G, d) and length logits (B, G, P); in training
        each sample's condition is dropped with ``cond_drop_prob`` (CFG)."""
        return self.encoder(gloss_ids, gloss_mask, self.cond_drop_prob)

    @abstractmethod
    def loss(self, tokens: Tensor, token_mask: Tensor, enc: GlossEncoding) -> tuple[Tensor, dict[str, Tensor]]:
        """The method's training loss on code tokens (B, N) inside token_mask (B, N), and extras to log."""

    @abstractmethod
    def sample(self, enc: GlossEncoding, token_mask: Tensor, generator: torch.Generator | None = None) -> Generated:
        """Tokens for every position of token_mask (B, N), conditioned on ``enc``."""

    @abstractmethod
    def steps(self, num_tokens: Tensor) -> int:
        """Network evaluations per sequence of num_tokens (B,) tokens (the report's "steps")."""


class _DenoiserGenerator(CodeGenerator):
    """A generator over a denoiser (x_t, t, token_mask, **cond) -> x0 logits."""

    def __init__(self, encoder: GlossEncoder, denoiser: Denoiser, cond_drop_prob: float = 0.0):
        super().__init__(encoder, cond_drop_prob)
        self.denoiser = denoiser

    @property
    def name(self) -> str:
        return f"{self.table_name} (Transformer)" if isinstance(self.denoiser, TransformerDenoiser) else self.table_name


class DiffusionGenerator(_DenoiserGenerator):
    """PoseVQ-Diffusion: mask-and-replace diffusion over the denoiser."""

    table_name = "PoseVQ-Diffusion"

    def __init__(
        self,
        encoder: GlossEncoder,
        denoiser: Denoiser,
        diffusion: MaskReplaceDiffusion,
        sample_steps: int | None = None,  # None = all T; fewer = fast sampling
        top_r: float | None = None,
        guidance_scale: float | None = None,
        cond_drop_prob: float = 0.0,
    ):
        super().__init__(encoder, denoiser, cond_drop_prob)
        if guidance_scale is not None and cond_drop_prob <= 0:
            raise ValueError("guidance_scale needs a null condition trained with cond_drop_prob > 0, "
                             f"got cond_drop_prob={cond_drop_prob}")
        self.diffusion = diffusion
        self.sample_steps, self.top_r, self.guidance_scale = sample_steps, top_r, guidance_scale
        diffusion.timesteps(sample_steps)  # a bad step count fails now, not at the first validation

    def loss(self, tokens: Tensor, token_mask: Tensor, enc: GlossEncoding) -> tuple[Tensor, dict[str, Tensor]]:
        t = None  # training: importance-sampled steps
        if not self.training:  # evaluation: uniform steps, so dev losses do not move with the sampler's history
            t = torch.randint(1, self.diffusion.num_timesteps + 1, (len(tokens),), device=tokens.device)
        return self.diffusion.loss(self.denoiser, tokens, token_mask, enc.cond, t)

    def sample(self, enc: GlossEncoding, token_mask: Tensor, generator: torch.Generator | None = None) -> Generated:
        uncond = self.encoder.unconditional(enc.mask) if self.guidance_scale is not None else None
        return self.diffusion.sample(self.denoiser, enc.cond, token_mask, self.sample_steps, self.top_r,
                                     self.guidance_scale, uncond, generator)

    def steps(self, num_tokens: Tensor) -> int:
        return len(self.diffusion.timesteps(self.sample_steps))


class MaskPredictGenerator(_DenoiserGenerator):
    """PoseVQ-MP: Mask-Predict over the denoiser. Decoding is deterministic (argmax), so `sample`
    takes a generator only to share the interface."""

    table_name = "PoseVQ-MP"

    def __init__(self, encoder: GlossEncoder, denoiser: Denoiser, mask_predict: MaskPredict):
        super().__init__(encoder, denoiser)
        self.mask_predict = mask_predict

    def loss(self, tokens: Tensor, token_mask: Tensor, enc: GlossEncoding) -> tuple[Tensor, dict[str, Tensor]]:
        return self.mask_predict.loss(self.denoiser, tokens, token_mask, enc.cond)

    def sample(self, enc: GlossEncoding, token_mask: Tensor, generator: torch.Generator | None = None) -> Generated:
        return self.mask_predict.sample(self.denoiser, enc.cond, token_mask)

    def steps(self, num_tokens: Tensor) -> int:
        return self.mask_predict.iterations


class AutoregressiveGenerator(CodeGenerator):
    """PoseVQ-AR: greedy left-to-right decoding (deterministic; `sample`'s generator is unused)."""

    table_name = "PoseVQ-AR"

    def __init__(self, encoder: GlossEncoder, decoder: AutoregressiveDecoder):
        super().__init__(encoder)
        self.decoder = decoder

    def loss(self, tokens: Tensor, token_mask: Tensor, enc: GlossEncoding) -> tuple[Tensor, dict[str, Tensor]]:
        return self.decoder.loss(tokens, token_mask, enc.memory, enc.mask)

    def sample(self, enc: GlossEncoding, token_mask: Tensor, generator: torch.Generator | None = None) -> Generated:
        return self.decoder.generate(enc.memory, enc.mask, token_mask)

    def steps(self, num_tokens: Tensor) -> int:
        return round(num_tokens.float().mean().item())  # one cached decoder step per token
