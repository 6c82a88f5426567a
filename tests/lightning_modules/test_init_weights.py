"""init_from: released Uni-Sign / Geo-Sign checkpoints and signlab .ckpt files as a run's start."""
from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import pytest
import torch
import yaml

from lightning_modules.checkpoint_io import CorruptCheckpointError
from lightning_modules.init_weights import InitFromError, apply_state_dict, load_initial_weights, read_state_dict
from tests.cli_runs import REPO
from tests.geosign_models import MT5_BASE, random_batch, tiny_model
from tests.released_layout import released_names


def perturbed(model, seed: int):
    """Every float tensor of `model` moved, so a load that skips one is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.1)
            if t.dtype == torch.long:
                t.add_(7)
    return model


def assert_same_weights(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if not k.startswith(skip):
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=2e-6, msg=k)


def test_released_geosign_checkpoint_loads_tensor_for_tensor(tmp_path):
    source = perturbed(tiny_model("token"), seed=1)
    with torch.no_grad():
        source.hyperbolic.attention.tau_attn_logit.fill_(0.0)  # moved away from τ_attn = 1
        source.hyperbolic.attention.b_key.mul_(3)  # a bias well away from the origin
    path = tmp_path / "best.pth"
    torch.save({"model": released_names(source)}, path)

    target = tiny_model("token")
    report = load_initial_weights(target, str(path))
    assert report.kind == "geosign" and not report.problems and not report.fresh
    # the release has no attention temperature: τ_attn = 1 after the load
    torch.testing.assert_close(target.hyperbolic.attention.tau_attn, torch.tensor(1.0))
    assert_same_weights(source, target, skip=("hyperbolic.attention.tau_attn_logit",))
    torch.testing.assert_close(target.hyperbolic.curvature(), source.hyperbolic.curvature())

    # the same weights compute the same losses
    source.hyperbolic.attention.tau_attn_logit.data.copy_(target.hyperbolic.attention.tau_attn_logit)
    batch = random_batch()
    source.eval(), target.eval()
    for model in (source, target):
        embeds, parts = model._encode(batch)
        out = model.lm(embeds, batch["frame_mask"], batch["target_ids"], batch["target_mask"])
        model._check = (out.loss, model.hyperbolic(parts, batch["frame_mask"], out.decoder_hidden,
                                                  batch["target_mask"])[0])
    torch.testing.assert_close(target._check, source._check, rtol=1e-5, atol=1e-5)


def test_unisign_checkpoint_leaves_the_branch_fresh(tmp_path, caplog):
    source = perturbed(tiny_model("token"), seed=2)
    released = {k: v for k, v in released_names(source).items()
                if not k.startswith(("hyp_", "geom_loss", "manifold", "loss_alpha", "global_step"))}
    path = tmp_path / "csl_stage1_weight.pth"
    torch.save({"model": released}, path)
    target = tiny_model("token")
    fresh = {k: v.clone() for k, v in target.state_dict().items() if k.startswith(("hyperbolic.", "blend."))}
    with caplog.at_level(logging.INFO, logger="lightning_modules.init_weights"):
        report = load_initial_weights(target, str(path))
    assert report.kind == "unisign" and not report.problems
    assert sorted(report.fresh) == sorted(fresh) and sorted(report.fresh + report.loaded) == sorted(target.state_dict())
    assert_same_weights(source, target, skip=("hyperbolic.", "blend."))
    for k, v in fresh.items():
        assert torch.equal(target.state_dict()[k], v), k
    assert "start fresh" in caplog.text


def test_signlab_checkpoint_loads(tmp_path):
    source = perturbed(tiny_model("pooled"), seed=3)
    path = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    target = tiny_model("pooled")
    assert load_initial_weights(target, str(path)).kind == "signlab"
    assert_same_weights(source, target)


@pytest.mark.parametrize("damage, message", [
    ("extra", r"unexpected .*\(1\): mystery\.weight"),
    ("missing", r"missing from the checkpoint \(1\): encoder\.out\.bias"),
    ("shape", r"shape mismatch \(1\): encoder\.part_embedding: checkpoint \(5,\) vs model \(64,\)"),
])
def test_strict_load_names_every_problem_and_changes_nothing(tmp_path, damage, message, caplog):
    state = perturbed(tiny_model(None), seed=4).state_dict()
    if damage == "extra":
        state["mystery.weight"] = torch.zeros(2)
    elif damage == "missing":
        del state["encoder.out.bias"]
    else:
        state["encoder.part_embedding"] = torch.zeros(5)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": state}, path)
    target = tiny_model(None)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(InitFromError, match=message) as err:
        load_initial_weights(target, str(path))
    assert str(path) in str(err.value) and "init_strict: false" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())

    # non-strict: everything that fits is loaded, the rest is logged
    with caplog.at_level(logging.WARNING, logger="lightning_modules.init_weights"):
        report = load_initial_weights(target, str(path), strict=False)
    assert report.problems and re.search(message, caplog.text)
    torch.testing.assert_close(target.encoder.out.weight, state["encoder.out.weight"])


def test_unequal_hand_copies_are_refused(tmp_path):
    released = released_names(tiny_model("token"))
    released["gcn_modules.left.layer0_0.gcn.conv.weight"] = released["gcn_modules.left.layer0_0.gcn.conv.weight"] + 1
    path = tmp_path / "odd.pth"
    torch.save({"model": released}, path)
    with pytest.raises(InitFromError, match=r"gcn_modules\.(left|right)\.layer0_0\.gcn\.conv\.weight and "
                                            r"gcn_modules\.(left|right)\..* must be equal copies"):
        load_initial_weights(tiny_model("token"), str(path))


def test_files_that_are_not_weights_are_refused_by_name(tmp_path):
    truncated = tmp_path / "truncated.pth"
    torch.save({"model": released_names(tiny_model("token"))}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CorruptCheckpointError, match=str(truncated)):
        load_initial_weights(tiny_model("token"), str(truncated))

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, evil, pickle_module=pickle)
    with pytest.raises(ValueError, match=f"{evil} refused|{evil} cannot be read"):
        load_initial_weights(tiny_model("token"), str(evil))

    other = tmp_path / "optimizer.pt"
    torch.save({"step": torch.tensor(3)}, other)
    with pytest.raises(InitFromError, match=f"init_from {other}: expected a Lightning checkpoint"):
        read_state_dict(other)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_initial_weights(tiny_model("token"), str(tmp_path / "nowhere.pth"))


def test_applied_once_at_setup_and_never_over_a_resume(tmp_path):
    source = perturbed(tiny_model(None), seed=5)
    path = tmp_path / "start.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    model = tiny_model(None, init_from=str(path))
    model.setup("fit")
    assert_same_weights(source, model)
    assert model.init_from_done
    with torch.no_grad():
        model.encoder.out.bias.add_(1.0)
    model.setup("validate")  # a later stage of the same run does not reload
    assert not torch.equal(model.encoder.out.bias, source.encoder.out.bias)

    resumed = tiny_model(None, init_from=str(tmp_path / "gone.ckpt"))
    resumed.init_from_done = True  # what the CLI sets for --ckpt_path
    resumed.setup("fit")  # the file is not even opened


def _released_tsv(name: str, shared: Path) -> dict[str, torch.Tensor]:
    """Zero tensors with exactly the keys, shapes and dtypes of a released state dict."""
    state = {}
    for line in (shared / "released" / name).read_text().splitlines():
        if line.startswith("#") or line.startswith("key\t"):
            continue
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        state[key] = torch.zeros(dims, dtype=getattr(torch, dtype))
    return state


@pytest.mark.parametrize("config, tsv, kind", [
    ("unisign_pose", "unisign_pose_state_dict.tsv", "unisign"),
    ("geosign_token", "geosign_token_state_dict.tsv", "geosign"),
])
def test_released_layouts_load_strictly_into_the_paper_configs(config, tsv, kind, shared_data):
    """Every released tensor (mT5-base included) has its place in the paper model and vice versa.
    (In memory: a 2.3 GB file would only test torch.save.)"""
    state = _released_tsv(tsv, shared_data)
    for k in [k for k in state if k.endswith("isp_c")]:
        state[k].fill_(0.5413)  # geoopt's isp_c for c = 1: softplus(0.5413) = 1.0
    args = yaml.safe_load((REPO / "experiments" / f"{config}.yaml").read_text())["model"]["init_args"]
    args.update(mt5_pretrained=None, mt5_config=MT5_BASE, tokenizer="synthsign-zh", init_from=None)
    from lightning_modules.geosign import GeoSignTranslator

    with torch.device("meta"):
        model = GeoSignTranslator(**args)
    model.to_empty(device="cpu")
    report = apply_state_dict(model, kind, state, where=tsv)
    assert report.kind == kind and not report.problems and not report.fresh
    assert sorted(report.loaded) == sorted(model.state_dict())
    if kind == "geosign":
        torch.testing.assert_close(model.hyperbolic.curvature(), torch.tensor(1.0), rtol=1e-4, atol=0)
