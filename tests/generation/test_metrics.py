"""DTW-MJE against a naive O(N·M) dynamic program, invariances, masks and the torchmetrics wrapper."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.metrics import DTWMJE, dtw_mje


def naive_dtw_mje(hyp: np.ndarray, ref: np.ndarray, cost: str) -> float:
    """Textbook DTW (PT's vendored pierre-rouanet/dtw recursion), divided by the reference length."""
    n, m = len(hyp), len(ref)
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diff = hyp[i - 1] - ref[j - 1]
            frame = np.abs(diff).sum() if cost == "l1" else np.sqrt((diff ** 2).sum(-1)).mean()
            acc[i, j] = frame + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return acc[n, m] / m


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), m=st.integers(1, 9), cost=st.sampled_from(["l1", "joint_l2"]),
       seed=st.integers(0, 2**16))
def test_single_pair_matches_naive_dp(n, m, cost, seed):
    rng = np.random.default_rng(seed)
    hyp, ref = rng.normal(size=(n, 50, 3)), rng.normal(size=(m, 50, 3))
    got = dtw_mje(hyp, ref, cost=cost)
    assert got.shape == ()
    assert got.item() == pytest.approx(naive_dtw_mje(hyp, ref, cost), rel=1e-9)


@pytest.mark.parametrize("cost", ["l1", "joint_l2"])
def test_batch_with_masks_matches_naive_on_unpadded_sequences(cost):
    rng = np.random.default_rng(0)
    hyp_len, ref_len = [5, 12, 1, 8], [9, 3, 6, 12]
    hyp = torch.tensor(rng.normal(size=(4, 12, 50, 3)), dtype=torch.float32)
    ref = torch.tensor(rng.normal(size=(4, 12, 50, 3)), dtype=torch.float32)
    hyp_mask = torch.arange(12) < torch.tensor(hyp_len)[:, None]
    ref_mask = torch.arange(12) < torch.tensor(ref_len)[:, None]
    hyp[~hyp_mask], ref[~ref_mask] = 1e3, -1e3  # garbage padding must not leak into the score
    got = dtw_mje(hyp, ref, hyp_mask, ref_mask, cost=cost)
    assert got.shape == (4,) and got.dtype == torch.float32
    want = [naive_dtw_mje(hyp[b, :hyp_len[b]].double().numpy(), ref[b, :ref_len[b]].double().numpy(), cost)
            for b in range(4)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("cost", ["l1", "joint_l2"])
def test_identical_and_time_warped_copies_score_zero(cost):
    rng = np.random.default_rng(1)
    ref = rng.uniform(-0.5, 0.5, size=(10, 50, 3)).astype(np.float32)  # PT value range
    warped = np.repeat(ref, rng.integers(1, 4, size=10), axis=0)  # every frame held 1-3 times
    assert dtw_mje(ref, ref, cost=cost).item() == pytest.approx(0.0, abs=1e-6)
    assert dtw_mje(warped, ref, cost=cost).item() == pytest.approx(0.0, abs=1e-6)
    shifted = ref + np.float32(0.1)  # every coordinate off by 0.1
    expected = 150 * 0.1 if cost == "l1" else np.sqrt(3) * 0.1
    assert dtw_mje(shifted, ref, cost=cost).item() == pytest.approx(expected, rel=1e-4)


def test_normalised_by_reference_length():
    ref = np.zeros((4, 50, 3))
    hyp = np.zeros((2, 50, 3))
    hyp[1] = 1.0  # one frame far off: L1 cost 150, paid once on the best path
    assert dtw_mje(hyp, ref).item() == pytest.approx(150 / 4)
    assert dtw_mje(ref, hyp).item() == pytest.approx(150 / 2)  # swapping changes the divisor


def test_bad_inputs_raise_named_errors():
    x = torch.zeros(2, 5, 50, 3)
    with pytest.raises(ValueError, match="cost must be one of"):
        dtw_mje(x, x, cost="l2")
    with pytest.raises(ValueError, match="differ in batch or joint dims"):
        dtw_mje(x, torch.zeros(2, 5, 49, 3))
    with pytest.raises(ValueError, match="hyp_mask: padding must come after"):
        dtw_mje(x, x, hyp_mask=torch.tensor([[True, False, True, True, True]] * 2))
    with pytest.raises(ValueError, match="ref_mask: every sequence needs"):
        dtw_mje(x, x, ref_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"ref_mask: expected shape \(2, 5\)"):
        dtw_mje(x, x, ref_mask=torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_metric_accumulates_the_mean_over_sequences():
    rng = np.random.default_rng(2)
    batches = [(torch.tensor(rng.normal(size=(b, 6, 50, 3))), torch.tensor(rng.normal(size=(b, 7, 50, 3))))
               for b in (3, 1)]
    metric = DTWMJE(cost="joint_l2")
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    for hyp, ref in batches:
        metric.update(hyp, ref)
    scores = torch.cat([dtw_mje(h, r, cost="joint_l2") for h, r in batches])
    assert metric.compute().item() == pytest.approx(scores.mean().item(), rel=1e-6)
    metric.reset()
    metric.update(*batches[1])
    assert metric.compute().item() == pytest.approx(scores[-1].item(), rel=1e-6)
