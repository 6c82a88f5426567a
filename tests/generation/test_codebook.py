"""EMA codebook: EMA formula, padding, dead-code restarts, straight-through, DDP agreement."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from generation.codebook import EMACodebook


def _codebook(embed: torch.Tensor, decay: float = 0.99, dead_threshold: float = 0.0) -> EMACodebook:
    """A trained-looking codebook with the given (G, K, D) vectors and unit EMA counts."""
    g, k, d = embed.shape
    cb = EMACodebook(k, d, num_books=g, decay=decay, dead_threshold=dead_threshold)
    cb.embed.copy_(embed)
    cb.embed_sum.copy_(embed)
    cb.cluster_size.fill_(1.0)
    cb.initialized.fill_(True)
    return cb


def test_ema_update_matches_formula_on_hand_made_batch():
    embed = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # (1, 3, 2)
    cb = _codebook(embed).train()
    z = torch.tensor([[0.1, 0.1], [0.9, 0.2], [1.1, -0.1], [0.2, 0.8]]).view(1, 4, 1, 2)  # (B, T, P, D)
    mask = torch.ones(1, 4, dtype=torch.bool)
    _, codes, _ = cb(z, mask)
    assert codes.view(-1).tolist() == [0, 1, 1, 2]

    # the formula, written out per code with plain Python numbers
    decay, eps, k = 0.99, cb.eps, 3
    vecs = z.view(4, 2).tolist()
    assign = [0, 1, 1, 2]
    n = [decay * 1.0 + (1 - decay) * assign.count(c) for c in range(k)]
    s = [[decay * embed[0, c, i].item() + (1 - decay) * sum(v[i] for v, a in zip(vecs, assign) if a == c)
          for i in range(2)] for c in range(k)]
    total = sum(n)
    expected = [[s[c][i] / ((n[c] + eps) / (total + k * eps) * total) for i in range(2)] for c in range(k)]
    torch.testing.assert_close(cb.cluster_size[0], torch.tensor(n))
    torch.testing.assert_close(cb.embed_sum[0], torch.tensor(s))
    torch.testing.assert_close(cb.embed[0], torch.tensor(expected))


def test_padded_frames_change_neither_statistics_nor_commitment():
    torch.manual_seed(0)
    embed = torch.randn(3, 8, 4)
    z = torch.randn(2, 5, 3, 4)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    garbage = z.clone()
    garbage[1, 3:] = 100.0  # far from every code: would dominate the statistics if it counted
    a, b = _codebook(embed).train(), _codebook(embed).train()
    _, codes_a, commit_a = a(z, mask)
    _, codes_b, commit_b = b(garbage, mask)
    for name in ("embed", "cluster_size", "embed_sum"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    torch.testing.assert_close(commit_a, commit_b)
    assert torch.equal(codes_a, codes_b)
    assert (codes_b[1, 3:] == 0).all()  # padded codes are 0 by contract


def test_non_finite_batch_leaves_statistics_untouched():
    torch.manual_seed(0)
    embed = torch.randn(3, 8, 4)
    cb, fresh = _codebook(embed).train(), EMACodebook(8, 4, num_books=3).train()
    z = torch.randn(2, 5, 3, 4)
    z[0, 2, 1, 3] = float("nan")  # e.g. a bf16 overflow in the encoder
    mask = torch.ones(2, 5, dtype=torch.bool)
    before = {name: getattr(cb, name).clone() for name in ("embed", "cluster_size", "embed_sum")}
    _, codes, _ = cb(z, mask)
    for name, value in before.items():
        assert torch.equal(getattr(cb, name), value), name
    assert codes.shape == (2, 5, 3)
    fresh(z, mask)
    assert not fresh.initialized  # initialised from the next finite batch instead
    z[0, 2, 1, 3] = 0.0
    fresh(z, mask)
    assert fresh.initialized and fresh.embed.isfinite().all()


def test_commitment_and_straight_through_gradient():
    embed = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    cb = _codebook(embed).eval()  # eval: no EMA update
    z = torch.tensor([[0.2, -0.1], [0.7, 1.2]]).view(1, 2, 1, 2).requires_grad_()
    z_st, codes, commit = cb(z, torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(z_st.detach().view(2, 2), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    # mean over frames and channels of (z - e)²: ((0.04 + 0.01) / 2 + (0.09 + 0.04) / 2) / 2
    torch.testing.assert_close(commit, torch.tensor(0.045))
    (z_st * torch.tensor([2.0, 3.0])).sum().backward()
    torch.testing.assert_close(z.grad.view(2, 2), torch.tensor([[2.0, 3.0], [2.0, 3.0]]))  # identity


def test_initialised_from_valid_data_and_shared_book():
    torch.manual_seed(1)
    cb = EMACodebook(16, 3, num_books=1).train()
    z = torch.randn(2, 4, 3, 3)
    mask = torch.tensor([[True] * 4, [True, False, False, False]])
    z[1, 1:] = 50.0  # padded frames must not be drawn as initial codes
    _, codes, _ = cb(z, mask)
    assert codes.shape == (2, 4, 3) and codes.max() < 16  # shared book: same id range for all parts
    assert bool(cb.initialized)
    assert cb.embed.abs().max() < 50.0  # neither the initial draw nor the EMA saw padded frames
    pool = z[mask].reshape(-1, 3)
    fresh = EMACodebook(16, 3, num_books=1).train()
    fresh._init_from_data(z, mask)
    dists = torch.cdist(fresh.embed[0], pool)
    assert (dists.min(dim=1).values < 1e-6).all()  # every initial code is a valid encoder output


def test_dead_codes_are_restarted_from_current_batch():
    torch.manual_seed(2)
    embed = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]]])
    cb = _codebook(embed, decay=0.5, dead_threshold=0.9).train()
    z = (torch.randn(1, 6, 1, 2) * 0.1)  # all near code 0: codes 1-3 go unused
    cb(z, torch.ones(1, 6, dtype=torch.bool))
    assert cb.dead_codes() == 3  # EMA counts 0.5 < 0.9
    batch = z.view(-1, 2)
    for c in (1, 2, 3):
        assert torch.cdist(cb.embed[0, c:c + 1], batch).min() < 1e-6  # moved onto an encoder output
        assert cb.cluster_size[0, c] == pytest.approx(0.9)
        torch.testing.assert_close(cb.embed_sum[0, c], cb.embed[0, c] * 0.9)
    assert cb.cluster_size[0, 0] == pytest.approx(0.5 + 0.5 * 6)  # the used code is untouched by the restart


def test_lookup_and_errors():
    cb = _codebook(torch.randn(3, 5, 2))
    codes = torch.tensor([[[0, 4, 2]]])
    torch.testing.assert_close(cb.lookup(codes)[0, 0], torch.stack([cb.embed[0, 0], cb.embed[1, 4], cb.embed[2, 2]]))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        cb.lookup(torch.tensor([[[0, 5, 0]]]))
    with pytest.raises(ValueError, match="2 parts given to 3 separate codebooks"):
        cb.quantize(torch.randn(1, 1, 2, 2))
    with pytest.raises(ValueError, match="mask"):
        cb(torch.randn(1, 2, 3, 2), torch.ones(1, 3, dtype=torch.bool))


# ---- DDP: two gloo processes must end with identical codebooks ------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)  # different data and different random restart draws per rank
        cb = EMACodebook(8, 4, num_books=3, decay=0.9, dead_threshold=1.0).train()
        total, restarts = torch.zeros(3, 8), 0
        for _ in range(3):
            z = torch.randn(2, 5, 3, 4) + rank
            _, codes, _ = cb(z, torch.ones(2, 5, dtype=torch.bool))
            total += torch.nn.functional.one_hot(codes, 8).sum((0, 1)).float()
            restarts += cb.dead_codes()
        torch.save(cb.state_dict() | {"counts": total, "restarts": restarts}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_codebook_identical_across_two_ddp_ranks(tmp_path):
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert not torch.equal(r0["counts"], r1["counts"])  # the ranks did see different data
    assert r0["restarts"] == r1["restarts"] > 0  # dead-code restarts happened, on both ranks alike
    for name in ("embed", "cluster_size", "embed_sum", "initialized"):
        assert torch.equal(r0[name], r1[name]), name
