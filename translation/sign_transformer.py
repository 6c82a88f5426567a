"""Sign Language Transformer over PT poses: joint gloss recognition (CTC) and text translation.

Camgöz et al. 2020 ("Sign Language Transformers", neccam/slt) with its CNN features replaced by
the 150 PT joint values per frame, as the PT/G2P-DDM back-translators do:

    poses (B, T, 50, 3) -> Linear(150, d) + LayerNorm + GELU -> [Conv1d stride 2]  (B, T', d)
      -> + sinusoidal positions -> Transformer encoder -> gloss logits (CTC)       (B, T', V_g)
      -> Transformer decoder (causal, cross-attends the encoder)  -> text logits  (B, L, V_t)

The CTC blank is the gloss vocabulary's ``<pad>`` id (0): it never occurs in a target, so the
vocabulary needs no extra class. The text decoder starts from the tokenizer's pad id (as T5
does); its output projection shares the token embedding's weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.keypoints import PT_NUM_JOINTS
from generation.transformer import sinusoidal_encoding

POSE_VALUES = PT_NUM_JOINTS * 3  # 150 values per frame


class SignTransformer(nn.Module):
    """Pose encoder with a CTC gloss head and an autoregressive text decoder."""

    def __init__(self, num_glosses: int, num_tokens: int, d_model: int = 256, heads: int = 4,
                 encoder_layers: int = 3, decoder_layers: int = 3, ff_mult: int = 4,
                 dropout: float = 0.1, downsample: int = 2, pad_token_id: int = 0):
        super().__init__()
        if downsample not in (1, 2):
            raise ValueError(f"downsample must be 1 or 2, got {downsample}")
        self.d_model, self.downsample, self.pad_token_id = d_model, downsample, pad_token_id
        self.frame_embed = nn.Sequential(nn.Linear(POSE_VALUES, d_model), nn.LayerNorm(d_model), nn.GELU())
        # ×2 temporal downsampling: PT's 25 fps poses are redundant and attention cost is T²
        self.pool = (nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1)
                     if downsample == 2 else nn.Identity())
        self.dropout = nn.Dropout(dropout)

        def layer(cls):
            return cls(d_model, heads, ff_mult * d_model, dropout, activation="gelu",
                       batch_first=True, norm_first=True)

        self.encoder = nn.TransformerEncoder(layer(nn.TransformerEncoderLayer), encoder_layers,
                                             norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.gloss_head = nn.Linear(d_model, num_glosses)
        self.token_embed = nn.Embedding(num_tokens, d_model)
        # std d^-1/2: the tied read-out then gives unit-scale logits (inputs are scaled by d^1/2)
        nn.init.normal_(self.token_embed.weight, std=d_model ** -0.5)
        self.decoder = nn.TransformerDecoder(layer(nn.TransformerDecoderLayer), decoder_layers,
                                             norm=nn.LayerNorm(d_model))

    def encode(self, poses: Tensor, pose_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, 50, 3), (B, T) -> encoder states (B, T', d) and their mask (B, T')."""
        if poses.dim() != 4 or poses.shape[2:] != (PT_NUM_JOINTS, 3):
            raise ValueError(f"poses must be (B, T, {PT_NUM_JOINTS}, 3), got {tuple(poses.shape)}")
        x = self.frame_embed(poses.flatten(2))  # (B, T, d)
        x = x * pose_mask[..., None]  # padding must not leak into the conv window of real frames
        if self.downsample == 2:
            x = self.pool(x.transpose(1, 2)).transpose(1, 2)  # (B, ceil(T/2), d)
            pose_mask = pose_mask[:, ::2]  # output t sees input frame 2t: valid iff that frame is
        positions = torch.arange(x.shape[1], device=x.device)
        x = self.dropout(x + sinusoidal_encoding(positions, self.d_model))
        # a fully padded row would make attention NaN; let it attend everywhere (output unused)
        key_padding = ~(pose_mask | ~pose_mask.any(-1, keepdim=True))
        return self.encoder(x, src_key_padding_mask=key_padding), pose_mask

    def gloss_log_probs(self, memory: Tensor) -> Tensor:
        """Encoder states (B, T', d) -> CTC log-probs (B, T', V_gloss)."""
        return self.gloss_head(memory).log_softmax(-1)

    def decode(self, memory: Tensor, memory_mask: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced text logits (B, L, V_text) for decoder inputs ``tokens`` (B, L)."""
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        x = self.dropout(self.token_embed(tokens) * self.d_model ** 0.5
                         + sinusoidal_encoding(positions, self.d_model))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device, dtype=torch.bool)
        key_padding = ~(memory_mask | ~memory_mask.any(-1, keepdim=True))
        h = self.decoder(x, memory, tgt_mask=causal, memory_key_padding_mask=key_padding)
        return F.linear(h, self.token_embed.weight)  # tied output projection

    def shift_right(self, target_ids: Tensor) -> Tensor:
        """Decoder inputs: the start token (pad id) followed by the target minus its last token."""
        start = target_ids.new_full((target_ids.shape[0], 1), self.pad_token_id)
        return torch.cat([start, target_ids[:, :-1]], 1)

    def forward(self, poses: Tensor, pose_mask: Tensor, target_ids: Tensor | None = None) -> dict[str, Tensor]:
        """``gloss_log_probs`` (B, T', V_g), ``frame_mask`` (B, T') and, given target ids (B, L),
        teacher-forced ``text_logits`` (B, L, V_t)."""
        memory, mask = self.encode(poses, pose_mask)
        out = {"gloss_log_probs": self.gloss_log_probs(memory), "frame_mask": mask, "memory": memory}
        if target_ids is not None:
            out["text_logits"] = self.decode(memory, mask, self.shift_right(target_ids))
        return out

    @torch.no_grad()
    def greedy_text(self, memory: Tensor, memory_mask: Tensor, max_len: int, eos_token_id: int) -> Tensor:
        """Greedy decoding -> token ids (B, <= max_len), pad after each sequence's eos."""
        batch = memory.shape[0]
        tokens = memory.new_full((batch, 1), self.pad_token_id, dtype=torch.long)
        finished = torch.zeros(batch, dtype=torch.bool, device=memory.device)
        for _ in range(max_len):
            next_token = self.decode(memory, memory_mask, tokens)[:, -1].argmax(-1)  # (B,)
            next_token = next_token.masked_fill(finished, self.pad_token_id)
            tokens = torch.cat([tokens, next_token[:, None]], 1)
            finished |= next_token == eos_token_id
            if finished.all():
                break
        return tokens[:, 1:]
