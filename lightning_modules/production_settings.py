"""PoseVQDiffusion's settings, grouped by what they shape: the networks, the discrete diffusion and
its samplers, length prediction, optimisation.

Each group is a frozen dataclass that LightningCLI parses as a nested group, so a YAML or the
command line sets single fields (``model.init_args.diffusion.sample_steps: 10``,
``--model.init_args.network.d_model 64``) and config files merge field by field. A checkpoint
stores each group as a plain dict (checkpoints load with ``weights_only=True``); ``as_settings``
turns it back into its dataclass. Values are checked when a group is built, so a bad value is
named before any weights are read.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, TypeVar, get_args

Method = Literal["diffusion", "mask_predict", "autoregressive"]  # Table 1's three generators
DenoiserName = Literal["codeunet", "transformer"]  # Table 2a

S = TypeVar("S")


def check_choice(owner: str, name: str, value: str, choices: type) -> None:
    """ValueError naming ``owner.name`` and the accepted values of the Literal ``choices``."""
    if value not in get_args(choices):
        raise ValueError(f"{owner}: {name} must be one of {get_args(choices)}, got {value!r}")


@dataclass(frozen=True)
class NetworkSettings:
    """Sizes of the gloss encoder, the denoiser (CodeUnet or Transformer) and the AR decoder."""

    denoiser: DenoiserName = "codeunet"  # Table 2a; unused by method "autoregressive"
    d_model: int = 512  # d_model, §4.1
    heads: int = 8
    encoder_depth: int = 6  # gloss encoder blocks, §3.2
    num_levels: int = 2  # CodeUnet halvings: temporal downsample 4, supplement Table 2
    blocks_per_level: int = 2  # N_depth = 2, §4.1
    middle_blocks: int = 2  # "the decoder has two blocks", §3.2
    depth: int = 14  # blocks of the Transformer denoiser (CodeUnet's count) or the AR decoder
    ff_mult: int = 4
    dropout: float = 0.1
    compile_denoiser: bool = False  # torch.compile the CodeUnet trunk (benchmarks/sampling.py --compile)

    def __post_init__(self) -> None:
        check_choice("network", "denoiser", self.denoiser, DenoiserName)
        if self.compile_denoiser and self.denoiser != "codeunet":
            raise ValueError(f"network: compile_denoiser compiles the CodeUnet trunk; got denoiser={self.denoiser!r}")


@dataclass(frozen=True)
class DiffusionSettings:
    """The mask-and-replace diffusion (Eqs. 4-9), its training and its samplers; Mask-Predict's
    iterations too (PoseVQ-MP is the process's mask-only case on the same denoiser)."""

    num_timesteps: int = 100  # T, §4.1
    aux_weight: float = 1.0  # λ, Eq. 9 (supplement Table 2)
    cond_drop_prob: float = 0.1  # gloss condition dropped for CFG training (G2P-DDM's empty_text_prob)
    sample_steps: int | None = None  # denoising steps at inference; None = all T (fast sampling if < T)
    top_r: float | None = None  # VQ-Diffusion truncation r (keep x0 classes up to mass r); None = off
    guidance_scale: float | None = None  # classifier-free guidance scale s; None = off
    mp_iterations: int = 10  # Mask-Predict decoding iterations (Mask-Predict's default)


@dataclass(frozen=True)
class LengthSettings:
    """Per-gloss length labels (sequential KNN, Eq. 11), the length head's loss (Eq. 12) and the
    total-length candidates decoded at inference (Table 2b)."""

    candidates: int = 1  # total-length candidates decoded, Table 2b (1-4)
    weight: float = 0.01  # δ, Eq. 12 (supplement Table 2)
    knn_k: int = 16  # k nearest neighbours, Eq. 11 (§4.1)
    knn_l: int = 16  # local window l, Eq. 11 (§4.1)

    def __post_init__(self) -> None:
        if min(self.candidates, self.knn_k, self.knn_l) < 1:
            raise ValueError(f"length: candidates, knn_k and knn_l must be >= 1, got "
                             f"{self.candidates}, {self.knn_k}, {self.knn_l}")


@dataclass(frozen=True)
class OptimSettings:
    """AdamW with linear warm-up, then cosine to ``min_lr_ratio`` of ``lr``."""

    lr: float = 4e-4  # §4.1
    betas: tuple[float, float] = (0.9, 0.96)  # AdamW β1, β2, §4.1
    weight_decay: float = 0.01
    warmup_steps: int = 5000  # linear warm-up iterations, §4.1
    min_lr_ratio: float = 1.0  # cosine floor after warm-up; 1.0 = constant lr (§4.1 names no decay)


def as_settings(cls: type[S], value: S | dict) -> S:
    """``value`` as a ``cls``: a dataclass is kept, a dict (a checkpoint's) is built into one;
    unknown keys are a ValueError naming them and the known ones."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"{cls.__name__}: expected a {cls.__name__} or a dict, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown settings {unknown}; known: {sorted(known)}")
    return cls(**value)
