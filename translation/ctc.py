"""CTC decoding of per-frame gloss log-probabilities: greedy and prefix beam search.

Both take (T, V) or (B, T, V) log-probs and the index of the blank class and return label id
sequences (blanks removed, repeats between blanks collapsed). The beam search is the standard
CTC prefix beam search (Graves 2012 §7.5; Hannun et al. 2014): each prefix keeps the probability
of its paths ending in blank and ending in its last label, so paths that collapse to the same
labelling are summed rather than competing.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

NEG_INF = float("-inf")


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def _per_sequence(log_probs: Tensor, lengths: Tensor | None) -> list[Tensor]:
    """(T, V) or (B, T, V) with optional (B,) lengths -> list of (T_b, V) float CPU tensors."""
    if log_probs.dim() == 2:
        log_probs = log_probs[None]
    if log_probs.dim() != 3:
        raise ValueError(f"CTC log-probs must be (T, V) or (B, T, V), got {tuple(log_probs.shape)}")
    log_probs = log_probs.detach().float().cpu()
    if lengths is None:
        return list(log_probs)
    if len(lengths) != len(log_probs):
        raise ValueError(f"{len(lengths)} lengths for a batch of {len(log_probs)} sequences")
    return [lp[:int(n)] for lp, n in zip(log_probs, lengths)]


def ctc_greedy_decode(log_probs: Tensor, lengths: Tensor | None = None, blank: int = 0) -> list[list[int]]:
    """Best path: argmax per frame, collapse repeats, drop blanks. One id list per sequence."""
    decoded = []
    for lp in _per_sequence(log_probs, lengths):
        path = lp.argmax(-1)
        keep = torch.ones_like(path, dtype=torch.bool)
        keep[1:] = path[1:] != path[:-1]  # first frame of each run
        decoded.append([int(c) for c in path[keep & (path != blank)]])
    return decoded


def _prefix_beam_search(log_probs: Tensor, beam_size: int, blank: int) -> list[int]:
    """Prefix beam search over one (T, V) sequence; returns the most probable labelling."""
    # prefix -> (log P(prefix, paths ending in blank), log P(prefix, paths ending in its last label))
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}
    # Only the top-`beam_size` labels of a frame can extend a prefix (ctcdecode's cutoff_top_n);
    # with beam_size >= V the search over extensions is exhaustive.
    top = log_probs.topk(min(beam_size, log_probs.shape[-1]), dim=-1).indices.tolist()
    rows = log_probs.tolist()
    for frame, candidates in zip(rows, top):
        blank_lp = frame[blank]
        grown: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [NEG_INF, NEG_INF])
        for prefix, (p_blank, p_label) in beams.items():
            p_total = _logaddexp(p_blank, p_label)
            stay = grown[prefix]
            stay[0] = _logaddexp(stay[0], p_total + blank_lp)  # emit blank: prefix unchanged
            for c in candidates:
                if c == blank:
                    continue
                lp = frame[c]
                extended = grown[prefix + (c,)]
                if prefix and c == prefix[-1]:
                    # a repeat only starts a new label after a blank; otherwise it merges
                    extended[1] = _logaddexp(extended[1], p_blank + lp)
                    stay[1] = _logaddexp(stay[1], p_label + lp)
                else:
                    extended[1] = _logaddexp(extended[1], p_total + lp)
        ranked = sorted(grown.items(), key=lambda kv: _logaddexp(*kv[1]), reverse=True)[:beam_size]
        beams = {prefix: (p[0], p[1]) for prefix, p in ranked}
    best = max(beams.items(), key=lambda kv: _logaddexp(*kv[1]))[0]
    return list(best)


def ctc_beam_decode(log_probs: Tensor, lengths: Tensor | None = None, blank: int = 0,
                    beam_size: int = 5) -> list[list[int]]:
    """CTC prefix beam search; one most-probable labelling (id list) per sequence."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    return [_prefix_beam_search(lp, beam_size, blank) for lp in _per_sequence(log_probs, lengths)]
