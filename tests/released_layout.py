"""signlab weights under the released Uni-Sign / Geo-Sign names: the files `init_from` reads,
made from a model in the test (tests never download the real ones)."""
from __future__ import annotations

import torch

from datamodules.keypoints import PART_NAMES
from geometry import expmap0

RELEASED_PARTS = {"body": "body", "left": "left", "right": "right", "face": "face_all"}


def released_names(model, hyperbolic: bool = True) -> dict[str, torch.Tensor]:
    """The model's weights under the released Geo-Sign names, written from the released layout
    (../shared/data/released): hand stream under `left` and `right`, BatchNorm inside the GCN unit,
    one curvature under seven names, the key bias as a point on the ball."""
    out = {}
    for key, value in model.state_dict().items():
        value = value.clone()
        if key.startswith("lm.model."):
            out["mt5_model." + key.removeprefix("lm.model.")] = value
        elif key == "encoder.part_embedding":
            out["part_para"] = value
        elif key.startswith("encoder.out."):
            out["pose_proj." + key.removeprefix("encoder.out.")] = value
        elif key.startswith("encoder.streams."):
            stream, rest = key.removeprefix("encoder.streams.").split(".", 1)
            parts = ["left", "right"] if stream == "hands" else [stream]
            for part in parts:
                name = RELEASED_PARTS[part]
                if rest.startswith("proj."):
                    out[f"proj_linear.{name}.{rest.removeprefix('proj.')}"] = value
                    continue
                chain, index, tail = rest.split(".", 2)
                tail = "gcn.bn." + tail.removeprefix("bn.") if tail.startswith("bn.") else tail
                layer = f"layer{index}_0" if chain == "spatial" else f"layer0_{index}"
                module = "gcn_modules" if chain == "spatial" else "fusion_gcn_modules"
                out[f"{module}.{name}.{layer}.{tail}"] = value
    if not hyperbolic or model.hyperbolic is None:  # a Uni-Sign checkpoint
        return out
    hyp = model.hyperbolic
    c = hyp.curvature().detach()
    isp_c = torch.log(torch.expm1(c))  # geoopt: c = softplus(isp_c)
    for prefix in ["manifold", "geom_loss.manifold"] + [f"hyp_proj_{p}.manifold" for p in ("body", "left", "right", "face", "text")]:
        out[f"{prefix}.isp_c"] = isp_c.clone()
    for i, part in enumerate(PART_NAMES):
        out[f"hyp_proj_{part}.proj.weight"] = hyp.part_proj.weight[i].detach().clone()
        out[f"hyp_proj_{part}.proj.bias"] = hyp.part_proj.bias[i].detach().clone()
        out[f"hyp_proj_{part}.log_scale"] = hyp.part_proj.log_scale[i].detach().clone()
    out["hyp_proj_text.proj.weight"] = hyp.text_proj.weight.detach().clone()
    out["hyp_proj_text.proj.bias"] = hyp.text_proj.bias.detach().clone()
    out["hyp_proj_text.log_scale"] = hyp.text_proj.log_scale.detach().clone()
    out["hyp_attn_W"] = hyp.attention.M_key.detach().clone()
    out["hyp_attn_b"] = expmap0(hyp.attention.b_key.detach(), c)
    out["geom_loss.temp"] = hyp.contrastive.tau_logit.detach().clone()
    out["geom_loss.margin_base"] = hyp.contrastive.margin.detach().clone()
    out["loss_alpha_logit"] = model.blend.logit.detach().clone()
    out["global_step"] = torch.tensor(1234)
    return out
