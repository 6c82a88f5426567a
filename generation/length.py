"""Per-gloss lengths: sequential-KNN labels (PoseVQ-Diffusion §3.3, Eq. 11), the length head
trained on them (Eq. 12) and decoding with several total-length candidates (Table 2b).

Sequential-KNN follows the k-nearest-neighbour density-peaks clustering the paper cites
(DPC-KNN, as in TCFormer): a frame's density ρ (Eq. 11) uses its k nearest latents among frames
at most l apart, and the peaks are the frames farthest (δ) from any denser frame, preferring
denser frames within the window. Taking the M densest frames literally puts every peak in one
gloss, since the frames of a gloss are about equally dense; DPC's usual decision value ρ·δ
drops the peaks of short glosses, because with k = 16 their neighbours reach into adjacent
glosses and ρ = exp(−·) then shrinks exponentially. δ alone keeps one peak per gloss as long
as a gloss spans at most l + 1 frames or its frames stay denser than its neighbours'.
Between adjacent peaks (in sequence order) the boundary is the first frame closer to the next
peak's latent than to the current one. Known limit: a slow transition between two very
different poses can itself become a peak.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from generation.diffusion import Generated, tokens_to_frames


# ------------------------------------------------------------------------ sequential KNN


def even_lengths(num_frames: int, num_glosses: int) -> torch.Tensor:
    """Split T frames into M contiguous runs as evenly as possible (earlier runs take the remainder)."""
    base, rest = divmod(num_frames, num_glosses)
    return torch.tensor([base + (i < rest) for i in range(num_glosses)], dtype=torch.long)


def local_density(latents: torch.Tensor, k: int = 16, l: int = 16) -> torch.Tensor:
    """ρ_i = exp(−mean of the k smallest ||z_i − z_j||² over 0 < |i − j| <= l) (Eq. 11). (T, D) -> (T,).

    Frames near the ends (or in short sequences) with fewer than k such neighbours average over
    the ones they have; a single frame has density 1.
    """
    num_frames = latents.shape[0]
    dist = torch.cdist(latents, latents).square()  # (T, T)
    offset = (torch.arange(num_frames)[:, None] - torch.arange(num_frames)[None, :]).abs()
    window = (offset > 0) & (offset <= l)
    k_eff = min(k, 2 * l, num_frames - 1)
    if k_eff == 0:
        return torch.ones(num_frames, dtype=latents.dtype)
    nearest = dist.masked_fill(~window, float("inf")).topk(k_eff, dim=1, largest=False).values  # (T, k_eff)
    finite = nearest.isfinite()
    mean = nearest.where(finite, 0.0).sum(dim=1) / finite.sum(dim=1)
    return torch.exp(-mean)


def sequential_knn_lengths(latents: torch.Tensor, num_glosses: int, k: int = 16, l: int = 16) -> torch.Tensor:
    """Per-gloss frame counts L_1..L_M (M,) long summing to T, from frame latents (T, D).

    k nearest neighbours within |i − j| <= l (k = l = 16, §4). Edge cases: M = 1 gives [T];
    M >= T gives one frame to each of the first T glosses and 0 to the rest (the length head
    clamps targets to [1, P]); a sequence whose latents are all equal gives the even split;
    ties in density or δ go to the earlier frame; two peaks with equal latents get the
    midpoint between them as boundary.
    """
    if latents.dim() != 2 or latents.shape[0] == 0:
        raise ValueError(f"sequential_knn_lengths expects latents (T, D) with T >= 1, got {tuple(latents.shape)}")
    if num_glosses < 1 or k < 1 or l < 1:
        raise ValueError(f"need num_glosses, k, l >= 1, got {num_glosses}, {k}, {l}")
    z = latents.detach().double().cpu()
    num_frames = z.shape[0]
    if num_glosses == 1:
        return torch.tensor([num_frames])
    if num_glosses >= num_frames:
        return (torch.arange(num_glosses) < num_frames).long()
    dist = torch.cdist(z, z)  # (T, T) Euclidean
    if dist.max() == 0:
        return even_lengths(num_frames, num_glosses)

    rho = local_density(z, k, l)
    # δ_i: distance to the nearest denser frame (ties: the earlier frame counts as denser),
    # looked for within the window first, then anywhere; the densest frame gets its largest
    # distance, as in DPC
    idx = torch.arange(num_frames)
    denser = (rho[None, :] > rho[:, None]) | ((rho[None, :] == rho[:, None]) & (idx[None, :] < idx[:, None]))
    local = denser & ((idx[:, None] - idx[None, :]).abs() <= l)
    nearest_local = dist.masked_fill(~local, float("inf")).min(dim=1).values
    nearest_any = dist.masked_fill(~denser, float("inf")).min(dim=1).values
    nearest_any = torch.where(denser.any(dim=1), nearest_any, dist.max(dim=1).values)
    delta = torch.where(local.any(dim=1), nearest_local, nearest_any)
    # stable descending sort: equal δ keep index order, so ties go to the earlier frame
    peaks = torch.sort(torch.sort(-delta, stable=True).indices[:num_glosses]).values

    boundaries = []
    for a, b in zip(peaks[:-1].tolist(), peaks[1:].tolist()):
        span = torch.arange(a + 1, b + 1)
        closer = (z[span] - z[b]).norm(dim=1) < (z[span] - z[a]).norm(dim=1)
        boundaries.append(span[closer.nonzero()[0, 0]].item() if closer.any() else a + (b - a + 1) // 2)
    edges = torch.tensor([0, *boundaries, num_frames])
    return edges.diff()


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """lengths (B,) -> (B, max_len) bool, True for the first lengths[b] positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


# ------------------------------------------------------------------------ length head


class LengthHead(nn.Module):
    """Classifies each gloss's length into [1, P] from its encoding (Eq. 12). (B, G, d) -> (B, G, P)."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.max_len = max_len  # P
        self.proj = nn.Linear(d_model, max_len)

    def forward(self, gloss_encoding: torch.Tensor) -> torch.Tensor:
        return self.proj(gloss_encoding)  # class j is length j + 1

    def loss(
        self, logits: torch.Tensor, lengths: torch.Tensor, gloss_mask: torch.Tensor, delta: float = 0.01
    ) -> torch.Tensor:
        """L_len = δ/M Σ_i −log p(L_i | c) (Eq. 12; δ = 0.01, Supp. Table 2), over valid glosses.

        logits (B, G, P), lengths (B, G) long; targets outside [1, P] are clamped into it.
        """
        if lengths.shape != gloss_mask.shape or logits.shape[:2] != lengths.shape:
            shapes = f"{tuple(logits.shape)}, {tuple(lengths.shape)}, {tuple(gloss_mask.shape)}"
            raise ValueError(f"length logits, lengths and gloss_mask shapes disagree: {shapes}")
        target = lengths.clamp(1, self.max_len) - 1
        ce = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), reduction="none").view_as(lengths)
        return delta * (ce * gloss_mask).sum() / gloss_mask.sum().clamp(min=1)  # clamp: empty batch -> 0


def length_candidates(length_logits: torch.Tensor, gloss_mask: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The k most probable total lengths Σ_i L_i (B, k), best first.

    The per-gloss length distributions are treated as independent, so the distribution of the
    total is their convolution (exact, support [M, M·P]). k = 1 is its mode.
    """
    if not (gloss_mask.any(dim=1)).all():
        raise ValueError("length_candidates needs at least one valid gloss per sample")
    batch, glosses, max_len = length_logits.shape
    probs = torch.softmax(length_logits.float(), dim=-1)
    # index = length (0..P); masked glosses contribute length 0 with probability 1
    zero_length = F.pad(torch.ones_like(probs[..., :1]), (0, max_len))  # (B, G, P+1)
    probs = torch.where(gloss_mask.unsqueeze(-1), F.pad(probs, (1, 0)), zero_length)
    total = torch.ones(batch, 1, device=probs.device)  # distribution of the running sum, index = length
    for g in range(glosses):
        # grouped conv1d = one polynomial product per sample (flip: conv1d is a correlation)
        kernel = probs[:, g].flip(-1).unsqueeze(1)  # (B, 1, P+1)
        total = F.conv1d(F.pad(total, (max_len, max_len)).unsqueeze(0), kernel, groups=batch).squeeze(0)  # (B, S + P)
    support = total.shape[1] - 1
    if not 1 <= k <= support:
        raise ValueError(f"k={k} length candidates requested but only {support} totals are possible")
    total[:, 0] = -1.0  # a total of 0 frames is never a candidate
    return total.topk(k, dim=1).indices  # (B, k), index = total length


def decode_length_candidates(
    sample_fn: Callable[[torch.Tensor], Generated],
    frame_lengths: torch.Tensor,
    num_parts: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode once per total-length candidate and keep, per sample, the best by model score.

    sample_fn(token_mask (B, N)) -> Generated; frame_lengths (B, k) frame counts.
    Returns codes (B, T_max, P) with [PAD] after each length, frame_mask (B, T_max), score (B,).
    """
    max_frames = int(frame_lengths.max())
    best_codes, best_mask, best_score = None, None, None
    for c in range(frame_lengths.shape[1]):
        frame_mask = lengths_to_mask(frame_lengths[:, c], max_frames)  # (B, T_max)
        out = sample_fn(frame_mask.repeat_interleave(num_parts, dim=1))  # token mask (B, T_max·P)
        codes = tokens_to_frames(out.tokens, num_parts)
        if best_codes is None:
            best_codes, best_mask, best_score = codes, frame_mask, out.score
            continue
        better = out.score > best_score  # (B,)
        best_codes = torch.where(better[:, None, None], codes, best_codes)
        best_mask = torch.where(better[:, None], frame_mask, best_mask)
        best_score = torch.where(better, out.score, best_score)
    return best_codes, best_mask, best_score
