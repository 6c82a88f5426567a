"""EMA vector quantiser (van den Oord et al. 2017, App. A.1; VideoGPT's codebook) with a padding mask.

Nearest-neighbour quantisation of per-part feature vectors against one or several codebooks. The
codebook is not trained by gradients (Eq. 1's fourth term is replaced by exponential moving averages
of the per-code counts and sums, as the PoseVQ-Diffusion paper does). Differences from the public
G2P-DDM codebook (a copy of VideoGPT's): padded frames never enter the EMA statistics, the restart
candidates or the commitment loss; restarted codes get consistent EMA statistics.

Written here rather than taken from `vector-quantize-pytorch`: it is ~100 lines, the masked EMA and
the DDP reduction are easy to test against the formula, and the library's defaults change between
releases (decay 0.8, rotation trick on).

Under DDP (`torch.distributed` initialised) the per-code counts and sums are all-reduced before the
EMA step, and data-initialisation / dead-code replacement vectors are broadcast from rank 0, so every
rank holds the same codebook after every update.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class EMACodebook(nn.Module):
    """Quantise (B, T, P, D) vectors, part p against book ``p`` (``num_books == P``) or all against
    one shared book (``num_books == 1``). Codes are numbered 0..num_codes-1 within each book.

    Buffers: ``embed`` (G, K, D) code vectors; ``cluster_size`` (G, K) EMA of assignment counts;
    ``embed_sum`` (G, K, D) EMA of the sums of assigned vectors; ``initialized`` (whether ``embed``
    has been set from data yet).
    """

    def __init__(self, num_codes: int, dim: int, num_books: int = 1, decay: float = 0.99,
                 eps: float = 1e-5, dead_threshold: float = 1.0) -> None:
        super().__init__()
        if num_codes < 1 or dim < 1 or num_books < 1:
            raise ValueError(f"EMACodebook: num_codes, dim, num_books must be >= 1, got {num_codes}, {dim}, {num_books}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMACodebook: decay must be in [0, 1), got {decay}")
        self.num_codes, self.dim, self.num_books = num_codes, dim, num_books
        self.decay = decay  # EMA decay γ (van den Oord et al. 2017 App. A.1; 0.99 in VideoGPT / G2P-DDM)
        self.eps = eps  # Laplace smoothing pseudo-count, keeps never-used codes from dividing by 0
        self.dead_threshold = dead_threshold  # a code whose EMA count falls below this is restarted (VideoGPT: N < 1)
        self.register_buffer("embed", torch.zeros(num_books, num_codes, dim))
        self.register_buffer("cluster_size", torch.zeros(num_books, num_codes))
        self.register_buffer("embed_sum", torch.zeros(num_books, num_codes, dim))
        self.register_buffer("initialized", torch.tensor(False))
        # codes found dead (and restarted) at the last update; not saved, it is a diagnostic
        self.register_buffer("last_dead", torch.tensor(0), persistent=False)

    def _books(self, num_parts: int, device: torch.device) -> Tensor:
        """(P,) book index of every part."""
        if self.num_books == 1:
            return torch.zeros(num_parts, dtype=torch.long, device=device)
        if self.num_books != num_parts:
            raise ValueError(f"EMACodebook: {num_parts} parts given to {self.num_books} separate codebooks")
        return torch.arange(num_parts, device=device)

    def lookup(self, codes: Tensor) -> Tensor:
        """(B, T, P) long codes -> (B, T, P, D) code vectors."""
        if codes.min() < 0 or codes.max() >= self.num_codes:
            raise ValueError(f"EMACodebook.lookup: codes must lie in [0, {self.num_codes}), "
                             f"got range [{codes.min().item()}, {codes.max().item()}]")
        return self._gather(codes)

    def _gather(self, codes: Tensor) -> Tensor:
        books = self._books(codes.shape[-1], codes.device)
        return self.embed[books.expand_as(codes), codes]

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest code for every vector, no update: (B, T, P, D) -> codes (B, T, P), z_q (B, T, P, D)."""
        books = self._books(z.shape[-2], z.device)
        embed = self.embed[books]  # (P, K, D)
        with torch.autocast(z.device.type, enabled=False):  # bf16 distances would pick wrong neighbours
            z = z.float()
            # squared distances |z|² - 2 z·e + |e|², (B, T, P, K)
            dist2 = (z.pow(2).sum(-1, keepdim=True) - 2 * torch.einsum("btpd,pkd->btpk", z, embed)
                     + embed.pow(2).sum(-1))
        codes = dist2.argmin(-1)
        return codes, self._gather(codes)

    def forward(self, z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Quantise ``z`` (B, T, P, D) with valid frames ``mask`` (B, T) bool.

        Returns ``z_st`` (B, T, P, D), the quantised vectors with straight-through gradients to ``z``;
        ``codes`` (B, T, P) long, 0 at padded frames; ``commit`` scalar, the commitment term
        ‖sg[z_q] − z‖² averaged over valid frames and channels and summed over parts (β not applied).
        In training mode the EMA statistics are updated from the valid frames afterwards.
        """
        if z.dim() != 4 or mask.shape != z.shape[:2]:
            raise ValueError(f"EMACodebook: expected z (B, T, P, D) and mask (B, T), got {tuple(z.shape)} and {tuple(mask.shape)}")
        mask = mask.bool()
        z = z.float()  # the codebook and its EMA statistics stay float32 under mixed precision
        learn = self.training and self._all_finite(z.detach(), mask)
        if learn and not bool(self.initialized):
            self._init_from_data(z.detach(), mask)
        codes, z_q = self.quantize(z.detach())
        valid = mask[..., None].to(z.dtype)  # (B, T, 1)
        per_part = ((z - z_q).pow(2).mean(-1) * valid).sum((0, 1)) / valid.sum().clamp(min=1)  # (P,)
        if learn:
            self._ema_update(z.detach(), codes, mask)
        z_st = z + (z_q - z).detach()
        return z_st, codes * mask[..., None], per_part.sum()

    # ---- EMA statistics -------------------------------------------------------------------------

    @staticmethod
    def _all_finite(z: Tensor, mask: Tensor) -> bool:
        """Whether every valid vector is finite, on every rank. A NaN/inf batch (whose step
        NonFiniteGuard skips) would stay in the EMA sums for good, so no rank learns from it;
        the ranks agree so that the all-reduces of the update stay matched."""
        ok = (z.isfinite().flatten(2).all(-1) | ~mask).all().to(torch.int32)
        if _distributed():
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok)

    def _candidates(self, z: Tensor, mask: Tensor) -> Tensor:
        """(G, K, D) random valid encoder outputs per book (the same on every rank: rank 0's)."""
        books = self._books(z.shape[-2], z.device)
        rows = []
        for g in range(self.num_books):  # at most 3 books
            pool = z[mask][:, books == g].reshape(-1, self.dim)  # valid vectors of this book's parts
            if pool.shape[0] == 0:
                raise ValueError("EMACodebook: a batch with no valid frame cannot initialise or restart codes")
            rows.append(pool[torch.randint(pool.shape[0], (self.num_codes,), device=z.device)])
        cand = torch.stack(rows)
        if _distributed():
            dist.broadcast(cand, src=0)
        return cand

    @torch.no_grad()
    def _init_from_data(self, z: Tensor, mask: Tensor) -> None:
        self.embed.copy_(self._candidates(z, mask))
        self.cluster_size.fill_(1.0)  # as if each code had been chosen once (VideoGPT's N = 1)
        self.embed_sum.copy_(self.embed)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: Tensor, codes: Tensor, mask: Tensor) -> None:
        books = self._books(z.shape[-2], z.device)
        onehot = F.one_hot(codes, self.num_codes).to(z.dtype) * mask[..., None, None]  # (B, T, P, K)
        with torch.autocast(z.device.type, enabled=False):  # EMA sums in float32 under mixed precision
            sums = torch.zeros_like(self.embed_sum).index_add_(
                0, books, torch.einsum("btpk,btpd->pkd", onehot, z))  # (G, K, D)
        counts = torch.zeros_like(self.cluster_size).index_add_(0, books, onehot.sum((0, 1)))  # (G, K)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum(-1, keepdim=True)  # (G, 1)
        smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
        self.embed.copy_(self.embed_sum / smoothed[..., None])
        self._restart_dead(z, mask)

    def _restart_dead(self, z: Tensor, mask: Tensor) -> None:
        dead = self.cluster_size < self.dead_threshold  # (G, K), identical on all ranks after all_reduce
        self.last_dead.fill_(int(dead.sum()))
        if not dead.any():
            return
        cand = self._candidates(z, mask)
        self.embed[dead] = cand[dead]
        # restarted codes look as if used `dead_threshold` times at their new place, so the next EMA
        # step keeps them there unless nothing is assigned to them
        self.cluster_size[dead] = self.dead_threshold
        self.embed_sum[dead] = cand[dead] * self.dead_threshold

    def dead_codes(self) -> int:
        """Codes (over all books) whose EMA count had fallen below the threshold at the last update."""
        return int(self.last_dead)
