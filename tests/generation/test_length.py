"""Sequential-KNN labels, the length head, length candidates and candidate decoding."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.diffusion import Generated
from generation.length import (
    LengthHead,
    decode_length_candidates,
    even_lengths,
    length_candidates,
    lengths_to_mask,
    local_density,
    sequential_knn_lengths,
)


def segments(lengths: list[int], seed: int = 0, noise: float = 0.05, dim: int = 8) -> torch.Tensor:
    """A latent sequence of contiguous glosses: each gloss a random centre plus small noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(lengths), dim, generator=g)
    return torch.cat([c + noise * torch.randn(n, dim, generator=g) for c, n in zip(centres, lengths)])


@pytest.mark.parametrize("lengths", [[12, 20, 9, 15], [16, 16], [5, 30, 8], [17, 3, 11, 25, 6]])
def test_recovers_known_boundaries(lengths):
    z = segments(lengths)
    out = sequential_knn_lengths(z, len(lengths))
    assert out.dtype == torch.long
    assert out.tolist() == lengths


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(6, 17), min_size=2, max_size=6), seed=st.integers(0, 1000))
def test_recovers_random_segmentations(lengths, seed):
    assert sequential_knn_lengths(segments(lengths, seed), len(lengths)).tolist() == lengths


def test_density_matches_definition():
    z = torch.randn(9, 3, dtype=torch.float64)
    k, l = 3, 2
    rho = local_density(z, k, l)
    for i in range(9):
        window = [j for j in range(9) if 0 < abs(i - j) <= l]
        d = sorted(((z[i] - z[j]) ** 2).sum().item() for j in window)[: min(k, len(window))]
        assert rho[i].item() == pytest.approx(math.exp(-sum(d) / len(d)), rel=1e-7)
    assert local_density(torch.randn(1, 3)).tolist() == [1.0]


def test_edge_cases():
    z = segments([10, 10])
    assert sequential_knn_lengths(z, 1).tolist() == [20]
    assert sequential_knn_lengths(z[:3], 3).tolist() == [1, 1, 1]
    assert sequential_knn_lengths(z[:3], 5).tolist() == [1, 1, 1, 0, 0]
    assert sequential_knn_lengths(torch.ones(10, 4), 3).tolist() == [4, 3, 3]  # constant: even split
    assert even_lengths(10, 4).tolist() == [3, 3, 2, 2]
    with pytest.raises(ValueError, match="latents"):
        sequential_knn_lengths(torch.zeros(0, 4), 2)
    with pytest.raises(ValueError, match="num_glosses"):
        sequential_knn_lengths(z, 0)


@settings(max_examples=30, deadline=None)
@given(num_frames=st.integers(1, 40), num_glosses=st.integers(1, 8), seed=st.integers(0, 100), repeat=st.booleans())
def test_lengths_always_partition_the_sequence(num_frames, num_glosses, seed, repeat):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num_frames, 4, generator=g)
    if repeat:  # ties everywhere: pairs of identical frames
        z = z.repeat_interleave(2, dim=0)[:num_frames]
    out = sequential_knn_lengths(z, num_glosses)
    assert out.shape == (num_glosses,) and out.sum().item() == num_frames
    if num_glosses <= num_frames:
        assert (out >= 1).all()


def test_length_head_loss_is_eq12():
    torch.manual_seed(0)
    head = LengthHead(8, max_len=5)
    enc = torch.randn(2, 3, 8)
    logits = head(enc)
    assert logits.shape == (2, 3, 5)
    lengths = torch.tensor([[1, 5, 9], [2, 0, 0]])  # 9 clamps to P = 5; masked glosses are ignored
    mask = torch.tensor([[True, True, True], [True, False, False]])
    logp = logits.log_softmax(-1)
    expected = -(logp[0, 0, 0] + logp[0, 1, 4] + logp[0, 2, 4] + logp[1, 0, 1]) / 4
    assert head.loss(logits, lengths, mask, delta=1.0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert head.loss(logits, lengths, mask).item() == pytest.approx(0.01 * expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="shapes disagree"):
        head.loss(logits, lengths[:, :2], mask)


def test_length_candidates_match_brute_force():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    cands = length_candidates(logits, mask, k=4)
    assert cands.shape == (2, 4)
    probs = logits.softmax(-1)
    for b in range(2):
        glosses = [g for g in range(3) if mask[b, g]]
        dist: dict[int, float] = {}
        for combo in itertools.product(range(4), repeat=len(glosses)):
            p = torch.prod(torch.stack([probs[b, g, c] for g, c in zip(glosses, combo)])).item()
            total = sum(c + 1 for c in combo)
            dist[total] = dist.get(total, 0.0) + p
        best = sorted(dist, key=dist.get, reverse=True)[:4]
        assert cands[b].tolist() == best
    # a confident head: candidate 1 is the sum of the per-gloss argmaxes
    sharp = torch.full((1, 2, 6), -20.0)
    sharp[0, 0, 2], sharp[0, 1, 4] = 20.0, 20.0
    assert length_candidates(sharp, torch.ones(1, 2, dtype=torch.bool), 1).tolist() == [[3 + 5]]
    with pytest.raises(ValueError, match="candidates"):
        length_candidates(sharp, torch.ones(1, 2, dtype=torch.bool), 20)


def test_decode_length_candidates_keeps_best_scored():
    lengths = torch.tensor([[3, 5], [4, 2]])  # frames per candidate
    parts, pad = 3, 9

    def sample_fn(token_mask):
        # scores prefer longer sequences for sample 0 and shorter ones for sample 1
        n = token_mask.sum(1).float()
        tokens = torch.where(token_mask, 1, pad)
        score = torch.stack([n[0], -n[1]])
        return Generated(tokens, token_mask.float(), score)

    codes, frame_mask, score = decode_length_candidates(sample_fn, lengths, parts)
    assert codes.shape == (2, 5, parts)
    assert frame_mask.sum(1).tolist() == [5, 2]
    assert (codes[frame_mask] == 1).all() and (codes[~frame_mask] == pad).all()
    assert score.tolist() == [15.0, -6.0]
    assert lengths_to_mask(torch.tensor([2, 0]), 3).tolist() == [[True, True, False], [False, False, False]]
