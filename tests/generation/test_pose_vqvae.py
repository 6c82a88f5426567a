"""Pose-VQVAE nn.Module: shapes, padding invariance, encode/decode round trip, losses, errors."""
from __future__ import annotations

import pytest
import torch

from datamodules.keypoints import PT_PARTS
from generation.pose_vqvae import PoseVQVAEModel, local_parents, part_errors, patch_joints


def _tiny(variant: str = "separate", **kw) -> PoseVQVAEModel:
    torch.manual_seed(0)
    return PoseVQVAEModel(variant, hidden=16, layers=1, heads=2, codebook_size=12, spl_hidden=8, **kw)


def _batch(lengths=(7, 4), t_max=7):
    torch.manual_seed(1)
    poses = torch.randn(len(lengths), t_max, 50, 3) * 0.3
    mask = torch.arange(t_max)[None] < torch.tensor(lengths)[:, None]
    return poses * mask[..., None, None], mask


@pytest.mark.parametrize("variant,parts", [("separate", 3), ("joint", 1)])
def test_shapes_and_code_ranges(variant, parts):
    model = _tiny(variant).train()
    poses, mask = _batch()
    out = model(poses, mask)
    assert model.num_parts == parts and model.num_codes == 12
    assert out["recon"].shape == (2, 7, 50, 3)
    assert out["codes"].shape == (2, 7, parts) and out["codes"].dtype == torch.long
    assert 0 <= out["codes"].min() and out["codes"].max() < 12
    assert (out["recon"][1, 4:] == 0).all() and (out["codes"][1, 4:] == 0).all()  # padding contract
    assert out["commit"].ndim == 0 and out["commit"] > 0


def test_shared_codebook_uses_one_book():
    model = _tiny(shared_codebook=True)
    assert model.codebook.embed.shape == (1, 12, 16)
    assert model.encode(*_batch()).shape == (2, 7, 3)


@pytest.mark.parametrize("train", [False, True])
def test_padding_changes_nothing_at_real_frames(train):
    poses, mask = _batch(lengths=(7, 4))
    garbage = poses.clone()
    garbage[1, 4:] = 5.0  # padded frames filled with large values instead of zeros
    short = _batch(lengths=(7, 4))[0][1:, :4], mask[1:, :4]  # the second sequence without padding
    a, b, c = _tiny().train(train), _tiny().train(train), _tiny().train(train)
    torch.manual_seed(3)
    out_a = a(poses, mask)
    torch.manual_seed(3)
    out_b = b(garbage, mask)
    torch.testing.assert_close(out_a["recon"], out_b["recon"])
    assert torch.equal(out_a["codes"], out_b["codes"])
    torch.testing.assert_close(out_a["commit"], out_b["commit"])
    for name, buf in a.codebook.named_buffers():  # EMA statistics ignore padded frames
        torch.testing.assert_close(buf, dict(b.codebook.named_buffers())[name])
    if not train:  # same sequence alone, unpadded: identical codes and reconstruction
        out_c = c(*short)
        torch.testing.assert_close(out_c["recon"][0], out_a["recon"][1, :4], atol=1e-5, rtol=1e-5)
        assert torch.equal(out_c["codes"][0], out_a["codes"][1, :4])


def test_fully_padded_sequence_gives_finite_output():
    model = _tiny().eval()
    poses, mask = _batch(lengths=(5, 0), t_max=5)
    out = model(poses, mask)
    assert torch.isfinite(out["recon"]).all()
    assert (out["recon"][1] == 0).all()


@pytest.mark.parametrize("variant", ["separate", "joint"])
def test_encode_decode_round_trip_matches_forward(variant):
    model = _tiny(variant).train()
    poses, mask = _batch()
    model(poses, mask)  # one training pass initialises the codebook from data
    model.eval()
    with torch.no_grad():
        out = model(poses, mask)
        codes = model.encode(poses, mask)
        assert torch.equal(codes, out["codes"])
        torch.testing.assert_close(model.decode(codes, mask), out["recon"])


@pytest.mark.parametrize("variant", ["separate", "joint"])
def test_gradients_reach_every_parameter_through_straight_through(variant):
    model = _tiny(variant).train()
    poses, mask = _batch()
    out = model(poses, mask)
    (part_errors(out["recon"], poses, mask, "l1").sum() + 0.25 * out["commit"]).backward()
    assert model.patch_embed[0].weight.grad.abs().sum() > 0  # through the quantiser to the encoder
    # no unused parameters (DDP without find_unused_parameters), and the codebook is EMA-only
    assert all(p.grad is not None for p in model.parameters())
    assert not any(b.requires_grad for b in model.codebook.buffers())


def test_bf16_autocast_keeps_codebook_float32():
    model = _tiny().train()
    poses, mask = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(poses, mask)
    assert torch.isfinite(out["recon"].float()).all()
    assert all(b.dtype == torch.float32 for n, b in model.codebook.named_buffers() if n in ("embed", "cluster_size"))


def test_part_errors_against_explicit_slices():
    torch.manual_seed(4)
    pred, target = torch.randn(2, 6, 50, 3), torch.randn(2, 6, 50, 3)
    mask = torch.tensor([[True] * 6, [True, True, False, False, False, False]])
    for kind, f in [("mse", lambda d: d.pow(2)), ("l1", lambda d: d.abs())]:
        got = part_errors(pred, target, mask, kind)
        for i, (lo, hi) in enumerate([(0, 8), (8, 29), (29, 50)]):  # PT body, left hand, right hand
            ref = f(pred[mask][:, lo:hi] - target[mask][:, lo:hi]).mean()
            torch.testing.assert_close(got[i], ref)
    with pytest.raises(ValueError, match="'l1' or 'mse'"):
        part_errors(pred, target, mask, "huber")


def test_patches_follow_pt_order():
    assert patch_joints("separate") == [PT_PARTS["body"], PT_PARTS["left_hand"], PT_PARTS["right_hand"]]
    assert patch_joints("separate")[1][0] == 8  # signer's left hand hangs off PT wrist 7
    assert patch_joints("joint") == [tuple(range(50))]
    assert local_parents(PT_PARTS["body"]) == [1, -1, 1, 2, 3, 1, 5, 6]
    with pytest.raises(ValueError, match="variant"):
        patch_joints("two-hands")


def test_bad_inputs_raise():
    model = _tiny()
    poses, mask = _batch()
    with pytest.raises(ValueError, match=r"\(B, T, 50, 3\)"):
        model(poses[:, :, :49], mask)
    with pytest.raises(ValueError, match="bool pose_mask"):
        model(poses, mask.float())
    with pytest.raises(ValueError, match=r"codes \(B, T, 3\)"):
        model.decode(torch.zeros(2, 7, 1, dtype=torch.long), mask)
