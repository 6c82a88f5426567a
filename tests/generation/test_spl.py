"""Structured prediction layer: chain order, shapes, tree validation."""
from __future__ import annotations

import pytest
import torch

from datamodules.keypoints import PT_PARTS, pt_parents
from generation.pose_vqvae import local_parents
from generation.spl import StructuredPredictionLayer, ancestors, tree_depths


def _descendants(parents: list[int], joint: int) -> set[int]:
    return {j for j in range(len(parents)) if joint in ancestors(parents, j)}


def _bump_output_bias(spl: StructuredPredictionLayer, joint: int) -> None:
    for level in spl.levels:
        slots = (level.joints == joint).nonzero()
        if len(slots):
            with torch.no_grad():
                level.b_out[slots[0, 0]] += 1.0
            return
    raise AssertionError(f"joint {joint} not found")


@pytest.mark.parametrize("parents", [local_parents(PT_PARTS["body"]), local_parents(PT_PARTS["left_hand"]),
                                     pt_parents()], ids=["body", "hand", "all50"])
def test_each_joint_depends_only_on_itself_and_its_ancestors(parents):
    torch.manual_seed(0)
    spl = StructuredPredictionLayer(parents, context_dim=8, hidden=16)
    ctx = torch.randn(4, 8)
    base = spl(ctx)
    assert base.shape == (4, len(parents), 3)
    for k in range(len(parents)):
        bumped = StructuredPredictionLayer(parents, context_dim=8, hidden=16)
        bumped.load_state_dict(spl.state_dict())
        _bump_output_bias(bumped, k)
        out = bumped(ctx)
        changed = {j for j in range(len(parents)) if not torch.allclose(out[:, j], base[:, j])}
        # changing joint k's prediction moves k and (through the ancestor inputs) its whole subtree
        assert changed == {k} | _descendants(parents, k), f"joint {k}"


def test_hand_chains_are_wrist_then_five_fingers_of_four():
    parents = local_parents(PT_PARTS["right_hand"])
    assert parents[0] == -1  # wrist is the root of the patch
    assert tree_depths(parents) == [0] + [1, 2, 3, 4] * 5
    body = local_parents(PT_PARTS["body"])
    assert body.count(-1) == 1 and body[1] == -1  # the neck is the only body root


def test_batched_leading_dims_and_gradients():
    spl = StructuredPredictionLayer(local_parents(PT_PARTS["body"]), context_dim=6, hidden=8)
    ctx = torch.randn(2, 3, 4, 6, requires_grad=True)
    out = spl(ctx)
    assert out.shape == (2, 3, 4, 8, 3)
    torch.testing.assert_close(out[1, 2], spl(ctx[1, 2]))
    out.sum().backward()
    # every parameter takes part (DDP without find_unused_parameters requires it)
    assert all(p.grad is not None and p.numel() for p in spl.parameters())


def test_bad_trees_raise():
    with pytest.raises(ValueError, match="cycle"):
        StructuredPredictionLayer([1, 0], context_dim=4)
    with pytest.raises(ValueError, match="out of range"):
        StructuredPredictionLayer([-1, 5], context_dim=4)
