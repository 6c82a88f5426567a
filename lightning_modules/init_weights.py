"""`init_from`: start a run from weights (never from a run's training state).

    lightning fit --config experiments/geosign_token.yaml \
        --model.init_args.init_from hf://ZechengLi19/Uni-Sign/csl_stage1_weight.pth

Three kinds of file are recognised by their contents:

- a **Uni-Sign** checkpoint (`{'model': state_dict}` from the released `Uni_Sign`, e.g. the CSL-News
  stage-1 `csl_stage1_weight.pth`): ST-GCN streams, part embedding, `pose_proj` and `mt5_model`;
- a **Geo-Sign** checkpoint (the same plus its hyperbolic branch: `hyp_proj_*`, `hyp_attn_*`,
  `geom_loss.*`, `manifold.isp_c`, `loss_alpha_logit`);
- a **signlab** checkpoint (a Lightning `.ckpt` with `state_dict`), e.g. CSL-Daily weights to start
  a PHOENIX-2014T run.

Released names are mapped onto signlab's (`released_to_signlab`) and every tensor is checked
against the model's shape. The release stores the shared hand stream twice (under `left` and
`right`) and its one curvature under seven names: such copies must be equal and are taken once.
Loading is strict by default: every checkpoint tensor is used and every model tensor the
checkpoint covers is set, else `InitFromError` lists the missing, unexpected and mis-shaped keys
before any training. A Uni-Sign checkpoint covers everything but Geo-Sign's hyperbolic branch and
loss blend, which then start fresh (logged). `strict=False` loads what fits and logs the rest.
Files are read with `weights_only=True`: a checkpoint can hold tensors, never code.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from datamodules.keypoints import PART_NAMES
from geometry import inverse_softplus, logmap0
from geometry.curvature import C_FLOOR
from geometry.nn import TAU_MIN, TAU_RANGE

from .checkpoint_io import load_checkpoint_file
from datamodules.hub import resolve_weights_file

log = logging.getLogger(__name__)

# The release's part names (models.py `self.modes`) -> signlab's.
RELEASED_PARTS = {"body": "body", "left": "left", "right": "right", "face_all": "face"}
# Model prefixes a Uni-Sign checkpoint has nothing for: Geo-Sign's branch and loss blend.
HYPERBOLIC_PREFIXES = ("hyperbolic.", "blend.")
# Released training state that is not a weight (Geo-Sign's micro-batch counter for α).
RELEASED_NON_WEIGHTS = ("global_step",)


class InitFromError(ValueError):
    """Weights that do not fit the model, or a file that holds no recognisable weights."""


@dataclass
class InitReport:
    """What `load_initial_weights` did: model keys set, and what it left out (non-strict)."""
    source: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model tensors the checkpoint covers but lacks
    unexpected: list[str] = field(default_factory=list)  # checkpoint tensors the model has no place for
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint (..) vs model (..)"
    fresh: list[str] = field(default_factory=list)  # model tensors outside the checkpoint's scope

    @property
    def problems(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        def listed(name: str, keys: list[str]) -> str:
            more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
            return f"\n  {name} ({len(keys)}): " + ", ".join(keys[:limit]) + more if keys else ""
        return (f"{self.kind} weights {self.source}: {len(self.loaded)} tensors loaded"
                + listed("missing from the checkpoint", self.missing)
                + listed("unexpected (no place in the model)", self.unexpected)
                + listed("shape mismatch", self.mismatched))


def read_state_dict(path: Path) -> tuple[str, dict[str, Tensor]]:
    """(kind, state dict) of a checkpoint file; kind is "signlab", "geosign" or "unisign"."""
    obj = load_checkpoint_file(path, weights_only=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        kind, state = "signlab", obj["state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        state = obj["model"]
        kind = "geosign" if any(k.startswith("hyp_proj_") for k in state) else "unisign"
    else:
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise InitFromError(f"init_from {path}: expected a Lightning checkpoint ('state_dict') or a "
                            f"Uni-Sign / Geo-Sign checkpoint ('model'), found {keys}")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise InitFromError(f"init_from {path}: entries that are not tensors: {bad[:8]}")
    if kind != "signlab" and not any(k.startswith("gcn_modules.") for k in state):
        raise InitFromError(f"init_from {path}: a 'model' state dict without Uni-Sign's gcn_modules; "
                            f"not a Uni-Sign or Geo-Sign checkpoint (keys: {list(state)[:8]})")
    return kind, dict(state)


def _released_encoder_key(key: str, share_hands: bool) -> str | None:
    """signlab name of one released pose-encoder tensor, or None if it is not one."""
    m = re.fullmatch(r"(proj_linear|gcn_modules|fusion_gcn_modules)\.(\w+?)\.(.+)", key)
    if m is None:
        return None
    module, part, rest = m.groups()
    if part not in RELEASED_PARTS:
        return None
    part = RELEASED_PARTS[part]
    stream = "hands" if share_hands and part in ("left", "right") else part
    if module == "proj_linear":
        return f"encoder.streams.{stream}.proj.{rest}"
    # spatial chain: layer{i}_0 (64, 128, 256); temporal chain: layer0_{j} (three 256 blocks)
    block = re.fullmatch(r"layer(\d+)_(\d+)\.(.+)", rest)
    if block is None:
        return None
    i, j, rest = block.groups()
    chain, index = ("spatial", i) if module == "gcn_modules" else ("temporal", j)
    rest = rest.replace("gcn.bn.", "bn.")  # the release's BatchNorm lives in its GCN unit
    return f"encoder.streams.{stream}.{chain}.{index}.{rest}"


def _curvature(isp_c: Tensor) -> Tensor:
    """geoopt's c = softplus(isp_c) as signlab's raw parameter (c = softplus(raw) + C_FLOOR)."""
    c = float(nn.functional.softplus(isp_c.double()))
    if c <= C_FLOOR:
        raise InitFromError(f"released curvature c = {c:.3g} is below signlab's floor {C_FLOOR}")
    return torch.tensor(inverse_softplus(c - C_FLOOR), dtype=torch.float32)


def released_to_signlab(state: Mapping[str, Tensor], share_hands: bool = True
                        ) -> tuple[dict[str, list[tuple[str, Tensor]]], list[str]]:
    """Map a released Uni-Sign / Geo-Sign state dict to signlab names.

    Returns ({signlab key: [(released key, tensor), ...]}, unmapped released keys). A key with
    several sources (the shared hand stream's two copies, the curvature's seven) is checked for
    equality by the caller.
    """
    out: dict[str, list[tuple[str, Tensor]]] = {}
    unmapped = []

    def put(key: str, source: str, value: Tensor) -> None:
        out.setdefault(key, []).append((source, value))

    isp_c = {k: v for k, v in state.items() if k.endswith("manifold.isp_c")}
    curvature = None
    if isp_c:
        first = next(iter(isp_c.values()))
        curvature = float(nn.functional.softplus(first.double()))
        raw = _curvature(first)
        for k, v in isp_c.items():
            # compared as released values, converted once
            put("hyperbolic.curvature.raw", k, raw if torch.equal(v, first) else _curvature(v))
    part_proj = {f"hyp_proj_{p}": i for i, p in enumerate(PART_NAMES)}  # Geo-Sign names them as signlab does
    grouped: dict[str, list[tuple[int, str, Tensor]]] = {}
    for key, value in state.items():
        if key in isp_c or key in RELEASED_NON_WEIGHTS:
            continue
        if key.startswith("mt5_model."):
            put("lm.model." + key.removeprefix("mt5_model."), key, value)
        elif key == "part_para":
            put("encoder.part_embedding", key, value)
        elif key.startswith("pose_proj."):
            put("encoder.out." + key.removeprefix("pose_proj."), key, value)
        elif (target := _released_encoder_key(key, share_hands)) is not None:
            put(target, key, value)
        elif (m := re.fullmatch(r"(hyp_proj_\w+?)\.(proj\.weight|proj\.bias|log_scale)", key)) is not None:
            module, name = m.groups()
            name = name.removeprefix("proj.")
            if module == "hyp_proj_text":
                put(f"hyperbolic.text_proj.{name}", key, value)
            elif module in part_proj:
                grouped.setdefault(name, []).append((part_proj[module], key, value))
            else:
                unmapped.append(key)
        elif key == "hyp_attn_W":
            put("hyperbolic.attention.M_key", key, value)
        elif key == "hyp_attn_b":
            # The release keeps the key bias as a point on the ball; signlab as its tangent
            # vector at the origin, b = log_0(point), so a plain optimiser step keeps it inside.
            if curvature is None:
                raise InitFromError("released hyp_attn_b without manifold.isp_c: cannot map the ball point")
            put("hyperbolic.attention.b_key", key, logmap0(value.float(), torch.tensor(curvature)))
        elif key == "geom_loss.temp":
            put("hyperbolic.contrastive.tau_logit", key, value)  # both: τ = sigmoid(·)·1.99 + 0.01
        elif key == "geom_loss.margin_base":
            put("hyperbolic.contrastive.margin", key, value)
        elif key == "loss_alpha_logit":
            put("blend.logit", key, value)
        else:
            unmapped.append(key)
    for name, entries in grouped.items():
        if sorted(i for i, _, _ in entries) != list(range(len(PART_NAMES))):
            unmapped.extend(k for _, k, _ in entries)
            continue
        entries.sort(key=lambda e: e[0])
        put(f"hyperbolic.part_proj.{name}", "+".join(k for _, k, _ in entries),
            torch.stack([v for _, _, v in entries]))
    if "hyp_attn_W" in state:
        # The release's attention has no temperature, i.e. τ_attn = 1 = sigmoid(logit)·1.99 + 0.01.
        p = (1.0 - TAU_MIN) / TAU_RANGE
        put("hyperbolic.attention.tau_attn_logit", "(release: no attention temperature)",
            torch.tensor(math.log(p / (1 - p))))
    return out, unmapped


def _merge_copies(sources: dict[str, list[tuple[str, Tensor]]], where: str) -> dict[str, Tensor]:
    merged = {}
    for key, entries in sources.items():
        first_key, first = entries[0]
        for other_key, other in entries[1:]:
            if other.shape != first.shape or not torch.equal(other, first):
                raise InitFromError(f"init_from {where}: {first_key} and {other_key} must be equal copies "
                                    f"(both are signlab's {key}), but they differ")
        merged[key] = first
    return merged


def _tensor_groups(module: nn.Module) -> list[list[str]]:
    """The module's state-dict names, grouped by the tensor they name (tied embeddings, the
    shared curvature and hand stream appear under several names)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())


def load_initial_weights(module: nn.Module, spec: str, strict: bool = True,
                         share_hands: bool = True) -> InitReport:
    """Copy the weights of `spec` (a path or `hf://owner/repo/file`) into `module` in place.

    Raises InitFromError (naming the file and listing the keys) when `strict` and anything does
    not fit; nothing is copied then.
    """
    path = resolve_weights_file(spec)
    kind, state = read_state_dict(path)
    where = spec if str(path) == spec else f"{spec} ({path})"
    return apply_state_dict(module, kind, state, where, strict, share_hands)


def apply_state_dict(module: nn.Module, kind: str, state: Mapping[str, Tensor], where: str,
                     strict: bool = True, share_hands: bool = True) -> InitReport:
    """`load_initial_weights` on a state dict already read; `where` names its file in messages."""
    if kind == "signlab":
        merged, unmapped = dict(state), []
    else:
        mapped, unmapped = released_to_signlab(state, share_hands)
        merged = _merge_copies(mapped, where)
    report = InitReport(source=where, kind=kind, unexpected=list(unmapped))
    target = module.state_dict(keep_vars=True)
    used: set[str] = set()
    plan: list[tuple[Tensor, Tensor]] = []
    for names in _tensor_groups(module):
        given = [n for n in names if n in merged]
        used.update(given)
        if not given:
            if kind == "unisign" and names[0].startswith(HYPERBOLIC_PREFIXES):
                report.fresh.extend(names)
            else:
                report.missing.append(names[0])
            continue
        value = _merge_copies({names[0]: [(n, merged[n]) for n in given]}, where)[names[0]]
        dest = target[names[0]]
        if value.shape != dest.shape:
            report.mismatched.append(f"{given[0]}: checkpoint {tuple(value.shape)} vs model {tuple(dest.shape)}")
            continue
        plan.append((dest, value))
        report.loaded.extend(names)
    report.unexpected += [k for k in merged if k not in used]
    if strict and report.problems:
        raise InitFromError(report.describe() + "\nThe checkpoint does not fit this model's architecture: "
                            "fix the model config, or set init_strict: false to load what fits.")
    with torch.no_grad():
        for dest, value in plan:
            dest.copy_(value)
    log.info(report.describe())
    if report.fresh:
        log.info("init_from %s: a Uni-Sign checkpoint has no hyperbolic branch; %d tensors start fresh "
                 "(%s ...)", where, len(report.fresh), ", ".join(report.fresh[:3]))
    if report.problems:
        log.warning("init_strict is false: left out of the load: %s", report.describe())
    return report
