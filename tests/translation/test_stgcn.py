"""ST-GCN graph partitions and the four-part pose encoder."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from datamodules.keypoints import BODY_CONTEXT_NODE, PART_NAMES, PART_NODES
from translation.stgcn import Graph, PoseEncoder, STGCNBlock, hop_distance

CHAIN = [(0, 1), (1, 2)]  # 0 - 1 - 2, center 0; neighbour counts incl. self: 2, 3, 2
TINY = dict(hidden=(8, 8, 16), temporal_blocks=2, temporal_kernel=3)


def tiny_encoder(**kw) -> PoseEncoder:
    torch.manual_seed(0)
    return PoseEncoder(out_dim=12, **{**TINY, **kw})


def random_parts(B: int = 2, T: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {p: torch.randn(B, T, PART_NODES[p], 3, generator=g) for p in PART_NAMES}


def test_hop_distance_of_chain_and_disconnected_node():
    d = hop_distance(4, CHAIN)
    assert d[0, 2] == 2 and d[2, 0] == 2 and d[1, 1] == 0
    assert torch.isinf(d[3, 0]) and d[3, 3] == 0


def test_uniform_is_column_normalised_neighbourhood():
    A = Graph(3, CHAIN, center=0, strategy="uniform").A
    expected = torch.tensor([[1 / 2, 1 / 3, 0], [1 / 2, 1 / 3, 1 / 2], [0, 1 / 3, 1 / 2]])
    assert A.shape == (1, 3, 3)
    torch.testing.assert_close(A[0], expected)


def test_distance_splits_self_and_one_hop():
    A = Graph(3, CHAIN, center=0, strategy="distance").A
    assert A.shape == (2, 3, 3)
    torch.testing.assert_close(A[0], torch.diag(torch.tensor([1 / 2, 1 / 3, 1 / 2])))
    torch.testing.assert_close(A[1], torch.tensor([[0, 1 / 3, 0], [1 / 2, 0, 1 / 2], [0, 1 / 3, 0]]))


def test_spatial_partitions_by_distance_to_center():
    A = Graph(3, CHAIN, center=0, strategy="spatial").A  # A[k, sender, receiver]
    assert A.shape == (3, 3, 3)
    torch.testing.assert_close(A[0], torch.diag(torch.tensor([1 / 2, 1 / 3, 1 / 2])))
    # senders at least as far from the center as the receiver: 1 -> 0, 2 -> 1
    torch.testing.assert_close(A[1], torch.tensor([[0, 0, 0], [1 / 2, 0, 0], [0, 1 / 3, 0]]))
    # senders closer to the center: 0 -> 1, 1 -> 2
    torch.testing.assert_close(A[2], torch.tensor([[0, 1 / 3, 0], [0, 0, 1 / 2], [0, 0, 0]]))


def test_spatial_uses_full_distance_beyond_max_hop():
    # Nodes 2 and 3 are beyond max_hop of the center; the edge 2-3 must still be split by direction.
    A = Graph(4, CHAIN + [(2, 3)], center=0, strategy="spatial").A
    assert A[1, 3, 2] > 0 and A[2, 3, 2] == 0  # 3 is farther than 2
    assert A[2, 2, 3] > 0 and A[1, 2, 3] == 0


def test_equidistant_neighbours_go_with_the_farther_kernel():
    # triangle around center 0: 1 and 2 are both one hop away
    A = Graph(3, [(0, 1), (0, 2), (1, 2)], center=0, strategy="spatial").A
    assert A[1, 1, 2] > 0 and A[2, 1, 2] == 0


@pytest.mark.parametrize("strategy, kernels", [("uniform", 1), ("distance", 2), ("spatial", 3)])
@pytest.mark.parametrize("part", PART_NAMES)
def test_part_graphs_kernel_count_and_normalisation(part, strategy, kernels):
    A = Graph.for_part(part, strategy).A
    V = PART_NODES[part]
    assert A.shape == (kernels, V, V)
    # every receiving node averages over its neighbourhood
    torch.testing.assert_close(A.sum(0).sum(0), torch.ones(V))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.integers(0, 10 ** 6), min_size=n - 1, max_size=n - 1), st.integers(0, n - 1))))
def test_random_trees_partition_the_uniform_kernel(case):
    n, parents, center = case
    edges = [(i + 1, p % (i + 1)) for i, p in enumerate(parents)]  # random tree
    uniform = Graph(n, edges, center, "uniform").A[0]
    for strategy in ("distance", "spatial"):
        torch.testing.assert_close(Graph(n, edges, center, strategy).A.sum(0), uniform)


def test_graph_rejects_bad_input():
    with pytest.raises(ValueError, match="strategy 'star'"):
        Graph(3, CHAIN, 0, "star")
    with pytest.raises(ValueError, match=r"edge \(0, 5\)"):
        Graph(3, [(0, 5)], 0)
    with pytest.raises(ValueError, match="unknown part 'tail'"):
        Graph.for_part("tail")
    with pytest.raises(ValueError, match="odd"):
        STGCNBlock(4, 4, Graph(3, CHAIN, 0).A, temporal_kernel=4)


def test_encoder_shapes_and_adjacency_is_learnable():
    enc = tiny_encoder()
    mask = torch.ones(2, 6, dtype=torch.bool)
    emb, feats = enc(random_parts(), mask)
    assert emb.shape == (2, 6, 12)
    assert {p: f.shape for p, f in feats.items()} == {p: (2, 6, 16) for p in PART_NAMES}
    adjacency = [p for n, p in enc.named_parameters() if n.endswith("gcn.A")]
    assert adjacency and all(p.requires_grad for p in adjacency)


def test_every_trained_parameter_gets_a_real_gradient():
    """No trained parameter whose gradient is pure rounding noise: a bias right before a BatchNorm
    is subtracted again by it, and Adam would turn its ~1e-9 gradient into lr-sized random steps.
    Those biases (the release's) exist but are frozen."""
    enc = tiny_encoder()
    enc(random_parts(), torch.ones(2, 6, dtype=torch.bool))[0].pow(2).sum().backward()
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    assert frozen == {n for n in dict(enc.named_parameters())
                      if n.endswith(("tcn.0.bias", "residual.0.bias"))} and frozen
    for name, p in enc.named_parameters():
        if name in frozen:
            assert p.grad is None and torch.all(p == 0), name
        else:
            assert p.grad is not None and p.grad.abs().max() > 1e-4 * p.grad.numel() ** -0.5, name


def test_default_encoder_matches_uni_sign_widths():
    enc = PoseEncoder(out_dim=768)
    body = enc.streams["body"]
    assert body.proj.out_features == 64
    assert [b.gcn.conv.out_channels // b.gcn.num_kernels for b in body.spatial] == [64, 128, 256]
    assert len(body.temporal) == 3 and body.temporal[0].tcn[0].kernel_size == (5, 1)
    assert enc.out.in_features == 1024 and enc.part_embedding.shape == (1024,)


def test_padded_frames_do_not_change_real_frames():
    enc = tiny_encoder().eval()  # BatchNorm with running statistics
    parts = random_parts(B=2, T=7)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    emb, feats = enc(parts, mask)

    changed = {p: x.clone() for p, x in parts.items()}
    for x in changed.values():
        x[1, 4:] = torch.randn_like(x[1, 4:]) * 10
    emb2, feats2 = enc(changed, mask)
    torch.testing.assert_close(emb2[:, :4], emb[:, :4])
    torch.testing.assert_close(emb2[0], emb[0])

    # the real frames equal those of the same clip run alone without padding
    alone, _ = enc({p: x[1:, :4] for p, x in parts.items()}, torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(alone[0], emb[1, :4], rtol=1e-5, atol=1e-5)
    for f in feats.values():  # part streams are zero on padding, ready for a masked mean
        assert torch.all(f[1, 4:] == 0) and torch.any(f[1, :4] != 0)


def test_shared_hands_use_one_stream():
    shared, separate = tiny_encoder(share_hands=True), tiny_encoder(share_hands=False)
    assert shared.streams[shared.stream_of["left"]] is shared.streams[shared.stream_of["right"]]
    assert separate.streams["left"] is not separate.streams["right"]
    one_stream = sum(p.numel() for p in separate.streams["right"].parameters())
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(separate) - n(shared) == one_stream

    # a loss on the right hand alone trains the left stream only when the streams are shared
    for enc, left_trained in ((shared, True), (separate, False)):
        _, feats = enc(random_parts(), torch.ones(2, 6, dtype=torch.bool))
        feats["right"].sum().backward()
        grad = enc.streams[enc.stream_of["left"]].proj.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == left_trained


@pytest.mark.parametrize("part", ["left", "right", "face"])
def test_body_context_is_used_but_detached(part):
    enc = tiny_encoder(share_hands=False)
    parts = random_parts()
    mask = torch.ones(2, 6, dtype=torch.bool)
    _, feats = enc(parts, mask)
    feats[part].sum().backward()
    assert all(p.grad is None for p in enc.streams["body"].parameters())

    # ... yet the part's output depends on its body node: change only that node.
    enc.eval()
    with torch.no_grad():
        _, before = enc(parts, mask)
        moved = dict(parts, body=parts["body"].clone())
        moved["body"][..., BODY_CONTEXT_NODE[part], :] += 1.0
        _, after = enc(moved, mask)
    assert not torch.allclose(before[part], after[part])


def test_encoder_rejects_bad_batches():
    enc = tiny_encoder()
    mask = torch.ones(2, 6, dtype=torch.bool)
    parts = random_parts()
    with pytest.raises(ValueError, match="missing pose part 'face'"):
        enc({p: x for p, x in parts.items() if p != "face"}, mask)
    with pytest.raises(ValueError, match="'left' has shape"):
        enc(dict(parts, left=parts["left"][:, :, :20]), mask)
    with pytest.raises(ValueError, match="bool"):
        enc(parts, mask.float())


def _released_block(x, weights, kernel, A, temporal, eps=1e-5):
    """The released block (Uni-Sign stgcn_block.py) in eval mode, written out with other ops:
    GCN unit = conv (bias) -> sum_k A_k -> BN -> ReLU; then the temporal conv (bias) -> BN, or
    nothing; plus the residual (1x1 conv with bias -> BN, or identity); then ReLU."""
    def bn(y, name):
        w, b, mean, var = (weights[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
        return (y - mean[:, None, None]) / torch.sqrt(var[:, None, None] + eps) * w[:, None, None] + b[:, None, None]

    B, C_in, T, V = x.shape
    K = A.shape[0]
    W = weights["gcn.conv.weight"][..., 0, 0].view(K, -1, C_in)  # (K, C_out, C_in)
    bias = weights["gcn.conv.bias"].view(K, -1)
    y = sum(torch.einsum("oc,bctv,vw->botw", W[k], x, A[k]) + bias[k][None, :, None, None] * A[k].sum(0)
            for k in range(K))
    y = torch.relu(torch.stack([bn(y_b, "bn") for y_b in y]))
    if temporal:
        Wt, bt = weights["tcn.0.weight"][..., 0], weights["tcn.0.bias"]  # (C, C, kt)
        pad = kernel // 2
        padded = torch.nn.functional.pad(y, (0, 0, pad, pad))
        y = sum(torch.einsum("oc,bctv->botv", Wt[:, :, j], padded[:, :, j:j + T]) for j in range(kernel))
        y = torch.stack([bn(y_b + bt[:, None, None], "tcn.1") for y_b in y])
    if "residual.0.weight" in weights:
        r = torch.einsum("oc,bctv->botv", weights["residual.0.weight"][..., 0, 0], x)
        r = torch.stack([bn(r_b + weights["residual.0.bias"][:, None, None], "residual.1") for r_b in r])
    else:
        r = x
    return torch.relu(y + r)


@pytest.mark.parametrize("c_in, c_out, kernel", [(4, 4, 1), (4, 6, 1), (6, 6, 3)])
def test_block_computes_the_released_arithmetic(c_in, c_out, kernel):
    """Released weights (non-zero conv biases, running statistics) give the released outputs."""
    torch.manual_seed(0)
    A = Graph(3, CHAIN, 0).A
    block = STGCNBlock(c_in, c_out, A, temporal_kernel=kernel).eval()
    released = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in block.state_dict().items()}
    for k in released:
        if k.endswith("running_var"):
            released[k] = released[k].abs() + 0.5
    block.load_state_dict(released)
    x = torch.randn(2, c_in, 7, 3)
    out = block(x, torch.ones(2, 7, dtype=torch.bool))
    expected = _released_block(x, released, kernel, released["gcn.A"], temporal=kernel > 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert (kernel > 1) == ("tcn.0.bias" in released) and (c_in != c_out) == ("residual.0.bias" in released)


# --- the encoder against a per-part loop of the release's arithmetic ----------------------------

def _step(forward, enc, parts, mask, probe):
    emb, feats = forward(enc, parts, mask)
    ((emb * probe).sum() + sum(f.square().mean() for f in feats.values())).backward()
    return emb, feats


@pytest.mark.parametrize("share_hands", [True, False])
def test_encoder_equals_per_part_reference_in_train_and_eval_mode(share_hands):
    """Same weights (perturbed: non-zero frozen biases, BatchNorm affines and statistics), a
    padded batch: outputs, every parameter's gradient and every BatchNorm buffer after one
    training step, then eval-mode outputs, equal the release's one-pass-per-part loop."""
    import copy

    from benchmarks.encoder import make_inputs, perturbed_encoder, reference_forward

    enc = perturbed_encoder(3, out_dim=12, share_hands=share_hands, **TINY).train()
    ref = copy.deepcopy(enc)
    parts, mask = make_inputs(batch=3, frames=9, seed=3)
    assert not mask.all()  # some clips are padded
    probe = torch.randn(3, 9, 12)
    out, feats = _step(lambda e, p, m: e(p, m), enc, parts, mask, probe)
    out_r, feats_r = _step(reference_forward, ref, parts, mask, probe)
    torch.testing.assert_close(out, out_r)
    for p in PART_NAMES:
        torch.testing.assert_close(feats[p], feats_r[p])
    grads_r = dict(ref.named_parameters())
    for name, p in enc.named_parameters():
        assert (p.grad is None) == (grads_r[name].grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads_r[name].grad, msg=name)
    buffers_r = dict(ref.named_buffers())
    for name, b in enc.named_buffers():  # running mean/var and num_batches_tracked
        torch.testing.assert_close(b, buffers_r[name], msg=name)
    enc.eval(), ref.eval()
    with torch.no_grad():
        out, feats = enc(parts, mask)
        out_r, feats_r = reference_forward(ref, parts, mask)
    torch.testing.assert_close(out, out_r)
    for p in PART_NAMES:
        torch.testing.assert_close(feats[p], feats_r[p])


def test_shared_hand_batchnorm_updates_running_stats_left_then_right():
    """As in the release: each hand is normalised with its own batch statistics, and the shared
    running statistics take two momentum steps, left hand first (derived here by hand from the
    two hands' batches)."""
    enc = tiny_encoder().train()
    bn = enc.streams["hands"].spatial[0].bn
    seen = []
    bn.register_forward_hook(lambda module, args, out: seen.append((args[0].detach().clone(), out.detach().clone())))
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    parts = random_parts(B=2, T=6)
    parts["right"] = parts["right"] * 3 + 1  # hands with clearly different statistics
    enc(parts, torch.ones(2, 6, dtype=torch.bool))
    assert len(seen) == 2 and bn.num_batches_tracked == 2
    (left, left_out), (right, right_out) = seen
    m = bn.momentum
    mean, var = mean0, var0
    for x, out in ((left, left_out), (right, right_out)):
        mu, v = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
        expected = (x - mu[:, None, None]) / torch.sqrt(v[:, None, None] + bn.eps) * bn.weight[:, None, None] + bn.bias[:, None, None]
        torch.testing.assert_close(out, expected.detach(), rtol=1e-4, atol=1e-5)  # own batch statistics
        n = x.numel() / x.shape[1]
        mean, var = (1 - m) * mean + m * mu, (1 - m) * var + m * v * n / (n - 1)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)


def test_encoder_benchmark_quick_writes_json(tmp_path):
    """benchmarks/encoder.py --quick end to end: checks equality first, then times alternating rounds."""
    import json

    from benchmarks import encoder as bench

    bench.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "encoder.json").read_text())
    assert result["quick"] is True and result["threads"] == 1 and result["goal_speedup"] == 1.3
    assert all(0 <= d <= result["tolerance"] for d in result["max_relative_diff"].values())
    assert set(result["max_relative_diff"]) == {"train_embeddings", "train_features", "gradients", "running_stats",
                                                "eval_embeddings", "eval_features"}
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"fast", "reference"}
    for row in rows.values():
        assert row["rounds"] == 2 and row["q1_s"] <= row["median_s"] <= row["q3_s"] and row["median_s"] > 0
    fast = rows["fast"]
    assert fast["speedup_q1"] <= fast["speedup"] <= fast["speedup_q3"] and fast["speedup"] > 0
    assert len(result["round_speedups"]) == 2 and result["machine"]["cpus"] >= 1
