"""Pose-VQVAE (PoseVQ-Diffusion §3.1): PT poses (B, T, 50, 3) <-> discrete codes (B, T, P).

Each frame is split into patches, P = 3 in PT joint order (``datamodules.keypoints.PT_PARTS``):
body (joints 0-7), left hand (8-28, the signer's left, hanging off wrist 7; G2P-DDM calls this
slice "rhand"), right hand (29-49). The ``joint`` variant (Table 2a ablation) uses one patch of all
50 joints. One Linear per patch embeds it to width h; a divided space-time Transformer (Bertasius et
al. 2021: attention over the P part tokens of a frame, then over frames per part) encodes; an EMA
codebook quantises every part token; the mirror Transformer decodes; one structured prediction
layer per patch predicts its joints along the kinematic chains.

Padding: padded frames never influence real frames (temporal attention masks them as keys) and
never enter the codebook statistics or the losses. Codes at padded frames are 0 and reconstructions
there are 0 (the data's padding value): always read them together with the mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.keypoints import PT_NUM_JOINTS, PT_PART_NAMES, PT_PARTS, pt_parents
from generation.codebook import EMACodebook
from generation.spl import StructuredPredictionLayer
from generation.transformer import sinusoidal_encoding

VARIANTS = ("separate", "joint")


def patch_joints(variant: str) -> list[tuple[int, ...]]:
    """PT joint indices of every patch of ``variant``."""
    if variant == "separate":
        return [PT_PARTS[name] for name in PT_PART_NAMES]
    if variant == "joint":
        return [tuple(range(PT_NUM_JOINTS))]
    raise ValueError(f"Pose-VQVAE variant must be one of {VARIANTS}, got {variant!r}")


def local_parents(joints: tuple[int, ...]) -> list[int]:
    """Parents within a patch (indices into ``joints``); a joint whose PT parent lies outside the
    patch (the neck, each hand's wrist) becomes a root."""
    parents = pt_parents()
    position = {j: i for i, j in enumerate(joints)}
    return [position.get(parents[j], -1) for j in joints]


def part_errors(pred: Tensor, target: Tensor, mask: Tensor, kind: str = "mse") -> Tensor:
    """(3,) mean error per PT part (body, left hand, right hand) over valid frames and the part's
    joints × xyz; ``kind`` is "l1" (|·|) or "mse" (squared)."""
    if kind not in ("l1", "mse"):
        raise ValueError(f"reconstruction loss must be 'l1' or 'mse', got {kind!r}")
    diff = pred - target
    err = (diff.abs() if kind == "l1" else diff.pow(2)).sum(-1)  # (B, T, 50)
    err = (err * mask[..., None]).sum((0, 1))  # (50,) summed over valid frames
    n_valid = mask.sum().clamp(min=1)  # an all-padding batch gives 0 error, not NaN
    return torch.stack([err[list(PT_PARTS[name])].sum() / (n_valid * 3 * len(PT_PARTS[name]))
                        for name in PT_PART_NAMES])


class SelfAttention(nn.Module):
    """Multi-head self-attention over (N, L, D) with an optional boolean (N, 1, L, L) mask (True = attend)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)  # (N, H, L, Dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(n, length, dim))


class SpaceTimeBlock(nn.Module):
    """Pre-LN block: attention over parts within a frame, then over frames within a part, then MLP."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm_space, self.space = nn.LayerNorm(dim), SelfAttention(dim, heads, dropout)
        self.norm_time, self.time = nn.LayerNorm(dim), SelfAttention(dim, heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_ratio * dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, time_mask: Tensor) -> Tensor:
        """x (B, T, P, D), time_mask (B*P, 1, T, T) bool -> (B, T, P, D)."""
        b, t, p, d = x.shape
        x = x + self.space(self.norm_space(x).reshape(b * t, p, d)).view(b, t, p, d)
        xt = self.norm_time(x).transpose(1, 2).reshape(b * p, t, d)  # (B*P, T, D)
        x = x + self.time(xt, time_mask).view(b, p, t, d).transpose(1, 2)
        return x + self.mlp(self.norm_mlp(x))


class SpaceTimeTransformer(nn.Module):
    """Divided space-time Transformer over (B, T, P, D) part tokens with a frame padding mask."""

    def __init__(self, dim: int, depth: int, heads: int, num_parts: int, dropout: float = 0.0) -> None:
        super().__init__()
        # which patch a token is; small init (GPT-2's 0.02) so it does not swamp the patch features
        self.part_embed = nn.Parameter(torch.randn(num_parts, dim) * 0.02)
        self.blocks = nn.ModuleList(SpaceTimeBlock(dim, heads, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, p, d = x.shape
        x = x + self.part_embed + sinusoidal_encoding(torch.arange(t, device=x.device), d)[:, None]  # frame positions
        # real frames attend to real frames only; a padded frame may also attend to itself, so a
        # fully padded sequence still has one key per row (no NaN from an all-masked softmax)
        eye = torch.eye(t, dtype=torch.bool, device=x.device)
        time_mask = mask[:, None, :] | eye  # (B, T, T) query x key
        time_mask = time_mask[:, None].expand(b, p, t, t).reshape(b * p, 1, t, t)
        for block in self.blocks:
            x = block(x, time_mask)
        return self.norm(x)


class PoseVQVAEModel(nn.Module):
    """Pose-VQVAE: ``forward`` for training, ``encode`` / ``decode`` for stage 2.

    Attributes for stage 2: ``num_codes`` (codes per book, ids 0..num_codes-1 in every part) and
    ``num_parts`` (3 for "separate", 1 for "joint").
    """

    def __init__(
        self,
        variant: str = "separate",  # "separate" (3 patches) or "joint" (all 50 joints), Table 2a
        hidden: int = 256,  # patch embedding / Transformer width h, §4.1
        layers: int = 3,  # Transformer layers of the encoder and of the decoder, §4.1
        heads: int = 4,
        codebook_size: int = 2048,  # codebook size V, §4.1
        shared_codebook: bool = False,  # one book for all patches instead of one per patch
        decay: float = 0.99,  # codebook EMA decay (VideoGPT / G2P-DDM)
        dead_threshold: float = 1.0,  # EMA count below which a code is restarted (VideoGPT)
        spl_hidden: int = 64,  # SPL per-joint hidden width (Aksan et al. 2019 configs)
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        patches = patch_joints(variant)
        self.variant, self.num_parts, self.num_codes = variant, len(patches), codebook_size
        self.patch_embed = nn.ModuleList(nn.Linear(3 * len(j), hidden) for j in patches)
        self.encoder = SpaceTimeTransformer(hidden, layers, heads, self.num_parts, dropout)
        num_books = 1 if shared_codebook else self.num_parts
        self.codebook = EMACodebook(codebook_size, hidden, num_books, decay=decay, dead_threshold=dead_threshold)
        self.decoder = SpaceTimeTransformer(hidden, layers, heads, self.num_parts, dropout)
        self.spl = nn.ModuleList(StructuredPredictionLayer(local_parents(j), hidden, spl_hidden) for j in patches)
        order = [j for patch in patches for j in patch]  # PT joint at each position of the part concat
        self.register_buffer("patch_index", torch.tensor(order), persistent=False)
        self.register_buffer("to_pt_order", torch.argsort(torch.tensor(order)), persistent=False)

    def _check(self, poses: Tensor, mask: Tensor) -> None:
        if poses.dim() != 4 or poses.shape[2:] != (PT_NUM_JOINTS, 3):
            raise ValueError(f"Pose-VQVAE expects poses (B, T, {PT_NUM_JOINTS}, 3), got {tuple(poses.shape)}")
        if mask.shape != poses.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"Pose-VQVAE expects a bool pose_mask (B, T) = {tuple(poses.shape[:2])}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")

    def _encode_features(self, poses: Tensor, mask: Tensor) -> Tensor:
        """(B, T, 50, 3) -> encoder features (B, T, P, h)."""
        self._check(poses, mask)
        flat = poses[:, :, self.patch_index].flatten(2)  # (B, T, 150) grouped by patch
        chunks = flat.split([lin.in_features for lin in self.patch_embed], dim=-1)
        tokens = torch.stack([lin(c) for lin, c in zip(self.patch_embed, chunks)], dim=2)  # (B, T, P, h)
        return self.encoder(tokens, mask)

    def _decode_features(self, z: Tensor, mask: Tensor) -> Tensor:
        """Quantised (B, T, P, h) -> poses (B, T, 50, 3), zero at padded frames."""
        out = self.decoder(z, mask)
        joints = torch.cat([spl(out[:, :, p]) for p, spl in enumerate(self.spl)], dim=2)  # (B, T, 50, 3) patch order
        return joints[:, :, self.to_pt_order] * mask[..., None, None]

    def forward(self, poses: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Returns ``recon`` (B, T, 50, 3), ``codes`` (B, T, P), ``commit`` (scalar, β not applied)."""
        z_st, codes, commit = self.codebook(self._encode_features(poses, mask), mask)
        return {"recon": self._decode_features(z_st, mask), "codes": codes, "commit": commit}

    def encode(self, poses: Tensor, mask: Tensor) -> Tensor:
        """(B, T, 50, 3), (B, T) bool -> codes (B, T, P) long; 0 at padded frames (use the mask)."""
        codes, _ = self.codebook.quantize(self._encode_features(poses, mask))
        return codes * mask[..., None]

    def encode_latents(self, poses: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``encode`` plus the pre-quantisation encoder latents (B, T, P, h) (sequential-KNN's z, Eq. 11)."""
        latents = self._encode_features(poses, mask)
        codes, _ = self.codebook.quantize(latents)
        return codes * mask[..., None], latents

    def decode(self, codes: Tensor, mask: Tensor) -> Tensor:
        """codes (B, T, P) long, (B, T) bool -> poses (B, T, 50, 3), 0 at padded frames."""
        if codes.dim() != 3 or codes.shape[-1] != self.num_parts or mask.shape != codes.shape[:2]:
            raise ValueError(f"Pose-VQVAE.decode expects codes (B, T, {self.num_parts}) and mask (B, T), "
                             f"got {tuple(codes.shape)} and {tuple(mask.shape)}")
        return self._decode_features(self.codebook.lookup(codes), mask.bool())
