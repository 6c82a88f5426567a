"""Stage 2 of PoseVQ-Diffusion: glosses -> Pose-VQVAE codes -> poses (paper §3.2-3.4, Table 1).

One LightningModule for the three generators of Table 1, chosen by ``method``:

- ``diffusion``: mask-and-replace discrete diffusion (Eqs. 4-9) with the CodeUnet denoiser, or the
  plain Transformer of Table 2a (``denoiser``); full reverse diffusion (T steps) or fast sampling
  (``sample_steps``), optional top-r truncation and classifier-free guidance. PoseVQ-Diffusion.
- ``mask_predict``: Mask-Predict on the same codes and denoiser (PoseVQ-MP).
- ``autoregressive``: a causal Transformer decoder over the same codes, KV-cached (PoseVQ-AR).

All three share the gloss encoder and its length head, trained jointly with weight δ (Eq. 12) on
sequential-KNN gloss lengths (Eq. 11). At inference the sequence length is the sum of the
per-gloss lengths: the ``length_candidates`` most probable totals are each decoded and the
sample the model scores best (mean token log-probability) is kept (Table 2b).

The frozen Pose-VQVAE comes from ``vqvae_ckpt`` (``--model.init_args.vqvae_ckpt PATH``). Its
weights are *kept* in this module's checkpoints: a generator only makes sense with the exact
tokenizer it was trained on, so resuming or reloading never depends on ``vqvae_ckpt`` still
holding the same weights (the file is read at construction for the architecture, then the
checkpoint's copy wins). It is excluded from the optimiser and stays in eval mode.

Targets cache: each sample's codes (T, P) and gloss lengths (M,) are computed once, the first
time its name is seen (train, dev or test batches alike), under ``torch.no_grad``. Sequential-KNN
runs on the VQ-VAE encoder's *pre-quantisation* latents (parts concatenated, (T, P·h)): the
quantised ones make every frame sharing a code exactly equidistant, which flattens the densities.
The cache is persisted to ``<run>/cache/posevq_targets.pt``, keyed by a hash of the VQ-VAE
weights and (k, l), loaded when training starts and rewritten after any epoch that added names
(rank 0 writes its own entries; under DDP other ranks fill their misses on the fly).

Evaluation (``test``): with ``back_translator_ckpt`` set, every test batch is generated (timed)
and fed to ``ProductionEvaluator`` (WER, BLEU-1..4, DTW-MJE; rows for the generator, the
Pose-VQVAE's reconstruction of the test poses and the ground truth);
the report goes to ``report_dir`` (default ``<run>/report``). Without it, ``test`` reports the
loss, the length head's accuracy and the DTW-MJE of the generated poses. ``predict`` writes the
generated sequences as PT files ``<predict_dir>/predict.{skels,gloss,text,files}``.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from torch import Tensor

from datamodules.formats import write_skels
from datamodules.tokenization import load_gloss_vocab
from generation.autoregressive import AutoregressiveDecoder
from generation.codeunet import CodeUnet, GlossEncoder, GlossEncoding, TransformerDenoiser
from generation.diffusion import MaskReplaceDiffusion, frames_to_tokens
from generation.length import decode_length_candidates, length_candidates, sequential_knn_lengths
from generation.mask_predict import MaskPredict
from generation.metrics import dtw_mje
from lightning_modules.checkpoint_io import check_checkpoint, load_checkpoint_file, load_lightning_module
from lightning_modules.optim import warmup_cosine
from lightning_modules.pose_vqvae import PoseVQVAE

log = logging.getLogger(__name__)

METHODS = ("diffusion", "mask_predict", "autoregressive")
DENOISERS = ("codeunet", "transformer")
METHOD_NAMES = {"diffusion": "PoseVQ-Diffusion", "mask_predict": "PoseVQ-MP", "autoregressive": "PoseVQ-AR"}
CACHE_FILE = "posevq_targets.pt"
VQVAE_DEMO_HINT = ("train the Pose-VQVAE first (lightning fit --config experiments/demo/pose_vqvae.yaml "
                   "writes runs/demo_pose_vqvae/checkpoints/last.ckpt) or pass --model.init_args.vqvae_ckpt PATH")


def load_frozen_vqvae(path: str) -> torch.nn.Module:
    """The Pose-VQVAE network of a ``PoseVQVAE`` checkpoint, frozen and in eval mode."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"vqvae_ckpt {path!r}: no such file; {VQVAE_DEMO_HINT}")
    model = load_lightning_module(PoseVQVAE, path, map_location="cpu").model
    model.requires_grad_(False)
    return model.eval()


class PoseVQDiffusion(LightningModule):
    """Gloss-to-pose generator over frozen Pose-VQVAE codes (see the module docstring)."""

    def __init__(
        self,
        vqvae_ckpt: str,
        gloss_vocab: str = "synthsign",
        method: str = "diffusion",  # "diffusion" | "mask_predict" | "autoregressive", Table 1
        denoiser: str = "codeunet",  # "codeunet" | "transformer" (Table 2a); unused by "autoregressive"
        d_model: int = 512,  # d_model, §4.1
        heads: int = 8,
        encoder_depth: int = 6,  # gloss encoder blocks, §3.2
        num_levels: int = 2,  # CodeUnet halvings: temporal downsample 4, supplement Table 2
        blocks_per_level: int = 2,  # N_depth = 2, §4.1
        middle_blocks: int = 2,  # "the decoder has two blocks", §3.2
        depth: int = 14,  # blocks of the Transformer denoiser (CodeUnet's count) or the AR decoder
        ff_mult: int = 4,
        dropout: float = 0.1,
        max_length: int = 300,  # P of Eq. 12 (longest sequence, PT's max_sent_length); also caps totals
        num_timesteps: int = 100,  # T, §4.1
        sample_steps: int | None = None,  # denoising steps at inference; None = all T (fast sampling if < T)
        top_r: float | None = None,  # VQ-Diffusion truncation r (keep x0 classes up to mass r); None = off
        guidance_scale: float | None = None,  # classifier-free guidance scale s; None = off
        cond_drop_prob: float = 0.1,  # gloss condition dropped for CFG training (G2P-DDM's empty_text_prob)
        mp_iterations: int = 10,  # Mask-Predict decoding iterations (Mask-Predict's default)
        length_candidates: int = 1,  # total-length candidates decoded, Table 2b (1-4)
        length_weight: float = 0.01,  # δ, Eq. 12 (supplement Table 2)
        aux_weight: float = 1.0,  # λ, Eq. 9 (supplement Table 2)
        knn_k: int = 16,  # k nearest neighbours, Eq. 11 (§4.1)
        knn_l: int = 16,  # local window l, Eq. 11 (§4.1)
        lr: float = 4e-4,  # §4.1
        betas: tuple[float, float] = (0.9, 0.96),  # AdamW β1, β2, §4.1
        weight_decay: float = 0.01,
        warmup_steps: int = 5000,  # linear warm-up iterations, §4.1
        min_lr_ratio: float = 1.0,  # cosine floor after warm-up; 1.0 = constant lr (§4.1 names no decay)
        num_logged_samples: int = 3,  # dev samples generated and drawn each validation
        compile_denoiser: bool = False,  # torch.compile the CodeUnet trunk (benchmarks/sampling.py --compile)
        back_translator_ckpt: str | None = None,
        language: str = "de",  # back-translation text language (BLEU tokenisation)
        report_dir: str | None = None,  # default <run>/report
        predict_dir: str | None = None,  # default <run>/predictions
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"PoseVQDiffusion: method must be one of {METHODS}, got {method!r}")
        if denoiser not in DENOISERS:
            raise ValueError(f"PoseVQDiffusion: denoiser must be one of {DENOISERS}, got {denoiser!r}")
        if guidance_scale is not None and method != "diffusion":
            raise ValueError(f"PoseVQDiffusion: guidance_scale needs method='diffusion', got {method!r}")
        if guidance_scale is not None and cond_drop_prob <= 0:
            raise ValueError("PoseVQDiffusion: guidance_scale needs a null condition trained with cond_drop_prob > 0, "
                             f"got cond_drop_prob={cond_drop_prob}")
        if compile_denoiser and (denoiser != "codeunet" or method == "autoregressive"):
            raise ValueError(f"PoseVQDiffusion: compile_denoiser compiles the CodeUnet trunk; got "
                             f"method={method!r}, denoiser={denoiser!r}")
        if length_candidates < 1 or max_length < 1:
            raise ValueError(f"PoseVQDiffusion: length_candidates and max_length must be >= 1, "
                             f"got {length_candidates}, {max_length}")
        self.save_hyperparameters()
        self.vqvae = load_frozen_vqvae(vqvae_ckpt)
        self.num_codes, self.num_parts = self.vqvae.num_codes, self.vqvae.num_parts
        self.gloss_vocab = load_gloss_vocab(gloss_vocab)
        self.encoder = GlossEncoder(len(self.gloss_vocab), d_model, heads, encoder_depth, max_length, ff_mult, dropout)
        # The CFG null condition only learns from dropped conditions: frozen when none are dropped,
        # so no parameter sits outside the loss (DDP refuses unused parameters).
        self.encoder.null.requires_grad_(method == "diffusion" and cond_drop_prob > 0)
        k, p = self.num_codes, self.num_parts
        if method == "autoregressive":
            self.decoder = AutoregressiveDecoder(k, p, d_model, heads, depth, ff_mult, dropout)
        else:
            if denoiser == "codeunet":
                self.denoiser = CodeUnet(k, p, d_model, heads, num_levels, blocks_per_level, middle_blocks,
                                         ff_mult, dropout, num_timesteps)
                if compile_denoiser:
                    self.denoiser.compile_trunk()
            else:
                self.denoiser = TransformerDenoiser(k, p, d_model, heads, depth, ff_mult, dropout, num_timesteps)
            if method == "diffusion":
                self.diffusion = MaskReplaceDiffusion(k, num_timesteps, aux_weight=aux_weight)
                self.diffusion.timesteps(sample_steps)  # fail now, not at the first validation
            else:
                self.mask_predict = MaskPredict(k, num_timesteps, mp_iterations)
        self.evaluator = None  # a ProductionEvaluator while testing with back_translator_ckpt
        self._targets: dict[str, tuple[Tensor, Tensor]] = {}  # name -> (codes (T, P), gloss lengths (M,))
        self._targets_dirty = False
        self._fingerprint: str | None = None
        self._logged_batch: dict | None = None
        self._predictions: list[dict] = []

    def train(self, mode: bool = True) -> "PoseVQDiffusion":
        super().train(mode)
        self.vqvae.eval()  # frozen tokenizer: no dropout, ever
        return self

    # ---- targets: codes and sequential-KNN lengths, cached by sample name ------------------------

    def vqvae_fingerprint(self) -> str:
        """Hash of the VQ-VAE weights: the cache is only valid for the exact tokenizer."""
        if self._fingerprint is None:
            digest = hashlib.sha1()
            for name, tensor in sorted(self.vqvae.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _cache_meta(self) -> dict:
        return {"fingerprint": self.vqvae_fingerprint(), "k": self.hparams.knn_k, "l": self.hparams.knn_l}

    def cache_path(self) -> Path | None:
        """``<run>/cache/posevq_targets.pt``, or None without a trainer."""
        trainer = self._trainer
        return None if trainer is None else Path(trainer.default_root_dir) / "cache" / CACHE_FILE

    def load_targets_cache(self) -> None:
        path = self.cache_path()
        if path is None or not path.is_file():
            return
        stored = load_checkpoint_file(path, weights_only=True)
        if not isinstance(stored, dict) or "targets" not in stored:
            raise ValueError(f"{path} is not a PoseVQ-Diffusion targets cache (no 'targets' entry)")
        if all(stored.get(key) == value for key, value in self._cache_meta().items()):
            self._targets.update({name: (codes, lengths) for name, (codes, lengths) in stored["targets"].items()})
        else:
            log.info("%s was built for another VQ-VAE or (k, l); recomputing the targets", path)

    def save_targets_cache(self) -> None:
        path = self.cache_path()
        if path is None or not self._targets_dirty or not self.trainer.is_global_zero:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({**self._cache_meta(), "targets": self._targets}, path)
        self._targets_dirty = False

    @torch.no_grad()
    def targets(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """codes (B, T, P) long (0 at padding), frame mask (B, T), gloss lengths (B, G) long (0 at padding).

        Samples not in the cache are encoded now; their gloss lengths come from sequential-KNN.
        """
        poses, frame_mask, gloss_mask = batch["poses"], batch["pose_mask"], batch["gloss_mask"]
        names = list(batch["name"])
        missing = [i for i, name in enumerate(names) if name not in self._targets]
        if missing:
            codes, latents = self.vqvae.encode_latents(poses[missing], frame_mask[missing])  # (b, T, P), (b, T, P, h)
            for j, i in enumerate(missing):
                valid = frame_mask[i]
                lengths = sequential_knn_lengths(latents[j][valid].flatten(1), int(gloss_mask[i].sum()),
                                                 self.hparams.knn_k, self.hparams.knn_l)
                self._targets[names[i]] = (codes[j][valid].cpu(), lengths)
            self._targets_dirty = True
        codes = torch.zeros(*frame_mask.shape, self.num_parts, dtype=torch.long, device=self.device)
        gloss_lengths = torch.zeros(gloss_mask.shape, dtype=torch.long, device=self.device)
        for i, name in enumerate(names):
            seq_codes, lengths = self._targets[name]
            if len(seq_codes) != int(frame_mask[i].sum()) or len(lengths) != int(gloss_mask[i].sum()):
                raise ValueError(f"cached targets of sample {name!r} do not match its batch entry "
                                 f"({len(seq_codes)} frames, {len(lengths)} glosses); delete {self.cache_path()}")
            codes[i, : len(seq_codes)] = seq_codes.to(self.device)
            gloss_lengths[i, : len(lengths)] = lengths.to(self.device)
        return codes, frame_mask, gloss_lengths

    # ---- training objective -----------------------------------------------------------------------

    def losses(self, batch: dict, uniform_t: bool = False) -> dict[str, Tensor]:
        """The method's code loss plus the length loss (Eq. 12): ``loss``, ``loss_len`` and extras.

        ``uniform_t`` draws the diffusion step uniformly instead of by importance sampling, so
        evaluation losses do not shift as the sampler's loss history changes."""
        codes, frame_mask, gloss_lengths = self.targets(batch)
        gloss_ids, gloss_mask = batch["gloss_ids"], batch["gloss_mask"]
        drop = self.hparams.cond_drop_prob if self.hparams.method == "diffusion" else 0.0
        enc = self.encoder(gloss_ids, gloss_mask, drop)
        tokens, token_mask = frames_to_tokens(codes, frame_mask, self.num_codes + 1)  # (B, T·P), [PAD] = K + 1
        if self.hparams.method == "diffusion":
            t = torch.randint(1, self.diffusion.num_timesteps + 1, (len(tokens),), device=self.device) if uniform_t else None
            loss, extras = self.diffusion.loss(self.denoiser, tokens, token_mask, enc.cond, t)
        elif self.hparams.method == "mask_predict":
            loss, extras = self.mask_predict.loss(self.denoiser, tokens, token_mask, enc.cond)
        else:
            loss, extras = self.decoder.loss(tokens, token_mask, enc.memory, enc.mask)
        loss_len = self.encoder.length_head.loss(enc.length_logits, gloss_lengths, gloss_mask,
                                                 self.hparams.length_weight)
        predicted = enc.length_logits.argmax(-1) + 1  # class j is length j + 1
        target = gloss_lengths.clamp(1, self.hparams.max_length)
        len_acc = ((predicted == target) & gloss_mask).sum() / gloss_mask.sum()
        return {"loss": loss + loss_len, "loss_code": loss.detach(), "loss_len": loss_len.detach(),
                "len_acc": len_acc, **extras}

    def _log_losses(self, split: str, out: dict[str, Tensor], batch_size: int) -> None:
        for key, value in out.items():
            self.log(f"{split}/{key}", value.detach(), prog_bar=key == "loss", batch_size=batch_size,
                     sync_dist=split != "train")

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.losses(batch)
        self._log_losses("train", out, len(batch["name"]))
        return out["loss"]

    def _eval_losses(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        """Losses under a per-batch seed (t, noise, masks), so dev curves compare like with like."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(batch_idx)
            return self.losses(batch, uniform_t=True)

    def on_train_start(self) -> None:
        self.load_targets_cache()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # the checkpoint's VQ-VAE weights replace the ones read from vqvae_ckpt: forget derived state
        self._fingerprint = None
        self._targets.clear()

    def on_train_epoch_end(self) -> None:
        self.save_targets_cache()

    # ---- generation -------------------------------------------------------------------------------

    def _sampler(self, enc: GlossEncoding, generator: torch.Generator | None):
        """token_mask (B, N) -> Generated, for the configured method."""
        hp = self.hparams
        if hp.method == "diffusion":
            uncond = self.encoder.unconditional(enc.mask) if hp.guidance_scale is not None else None
            return lambda token_mask: self.diffusion.sample(
                self.denoiser, enc.cond, token_mask, hp.sample_steps, hp.top_r, hp.guidance_scale, uncond, generator)
        if hp.method == "mask_predict":
            return lambda token_mask: self.mask_predict.sample(self.denoiser, enc.cond, token_mask)
        return lambda token_mask: self.decoder.generate(enc.memory, enc.mask, token_mask)

    def sampling_steps(self, frame_mask: Tensor) -> int:
        """Network evaluations per sequence and length candidate (the report's "steps"): the
        denoising steps, Mask-Predict's iterations, or the AR decoder's mean token count."""
        hp = self.hparams
        if hp.method == "diffusion":
            return len(self.diffusion.timesteps(hp.sample_steps))
        if hp.method == "mask_predict":
            return hp.mp_iterations
        return round(frame_mask.sum(1).float().mean().item() * self.num_parts)

    @torch.no_grad()
    def generate(
        self, gloss_ids: Tensor, gloss_mask: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Glosses (B, G) -> ``poses`` (B, T, 50, 3), ``frame_mask`` (B, T), ``codes`` (B, T, P) (0 at
        padding), ``score`` (B,) and the length ``candidates`` (B, k) that were decoded."""
        was_training = self.training
        self.eval()
        try:
            enc = self.encoder(gloss_ids, gloss_mask)
            totals = length_candidates(enc.length_logits, gloss_mask, self.hparams.length_candidates)  # (B, k)
            # the head can predict up to M·P frames; no training sequence is longer than P
            totals = totals.clamp(1, self.hparams.max_length)
            codes, frame_mask, score = decode_length_candidates(self._sampler(enc, generator), totals, self.num_parts)
            codes = codes.masked_fill(~frame_mask[..., None], 0)  # [PAD] -> a valid id for the decoder
            poses = self.vqvae.decode(codes, frame_mask)
        finally:
            self.train(was_training)
        return {"poses": poses, "frame_mask": frame_mask, "codes": codes, "score": score, "candidates": totals}

    # ---- validation: losses on every batch, a few generated samples drawn --------------------------

    def on_validation_epoch_start(self) -> None:
        self._logged_batch = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self._eval_losses(batch, batch_idx)
        self._log_losses("val", out, len(batch["name"]))
        if batch_idx == 0 and self.hparams.num_logged_samples > 0:
            self._logged_batch = {key: batch[key][: self.hparams.num_logged_samples]
                                  for key in ("poses", "pose_mask", "gloss_ids", "gloss_mask", "gloss", "name")}

    def on_validation_epoch_end(self) -> None:
        batch = self._logged_batch
        if batch is None or self.trainer.sanity_checking:
            return
        generator = torch.Generator(device=self.device).manual_seed(0)  # same noise every epoch
        out = self.generate(batch["gloss_ids"], batch["gloss_mask"], generator)
        dtw = dtw_mje(out["poses"], batch["poses"], out["frame_mask"], batch["pose_mask"])
        self.log("val/gen_dtw_mje", dtw.mean(), sync_dist=True)  # the few drawn samples: a trend, not Table 1
        length_error = (out["frame_mask"].sum(1) - batch["pose_mask"].sum(1)).abs().float().mean()
        self.log("val/gen_length_error", length_error, sync_dist=True)  # frames, predicted vs true
        if self.logger is None or not self.trainer.is_global_zero:
            return
        from generation.render import render_strip
        from lightning_modules.media import log_figure

        for i in range(len(batch["name"])):
            rows = {"ground truth": batch["poses"][i][batch["pose_mask"][i]].float().cpu().numpy(),
                    "generated": out["poses"][i][out["frame_mask"][i]].float().cpu().numpy()}
            log_figure(self, f"val/generated_{i}", render_strip(rows, title=" ".join(batch["gloss"][i])))

    # ---- test: back-translation evaluation ---------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage == "test" and self.hparams.back_translator_ckpt and self.evaluator is None:
            from lightning_modules.production_eval import ProductionEvaluator

            if Path(self.hparams.back_translator_ckpt).is_file():  # vetted before torch reads it (a missing file: its own error)
                check_checkpoint(self.hparams.back_translator_ckpt)
            self.evaluator = ProductionEvaluator(self.hparams.back_translator_ckpt, language=self.hparams.language)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        out = self._eval_losses(batch, batch_idx)
        self._log_losses("test", out, len(batch["name"]))
        if self.evaluator is None:
            return
        start = time.perf_counter()
        gen = self.generate(batch["gloss_ids"], batch["gloss_mask"])
        seconds = (time.perf_counter() - start) / len(batch["name"])
        codes, frame_mask, _ = self.targets(batch)  # the reference's own codes (cached by the losses above)
        reconstruction = self.vqvae.decode(codes, frame_mask)  # the tokenizer's ceiling row
        self.evaluator.update(list(batch["name"]), gen["poses"], gen["frame_mask"], batch["poses"],
                              batch["pose_mask"], gloss_refs=list(batch["gloss"]), text_refs=list(batch["text"]),
                              seconds_per_sequence=seconds, steps=self.sampling_steps(gen["frame_mask"]),
                              reconstruction=reconstruction)

    @property
    def method_name(self) -> str:
        """The row name of Table 1 / 2a."""
        name = METHOD_NAMES[self.hparams.method]
        return f"{name} (Transformer)" if self.hparams.method != "autoregressive" and \
            self.hparams.denoiser == "transformer" else name

    def on_test_epoch_end(self) -> None:
        if self.evaluator is None:
            return
        for key, value in _flatten_scalars(self.evaluator.compute()).items():
            self.log(f"test/{key}", value)  # compute() is already reduced over ranks
        if self.trainer.is_global_zero:
            out_dir = self.hparams.report_dir or str(Path(self.trainer.default_root_dir) / "report")
            md_path, _ = self.evaluator.write_report(out_dir, self.method_name)
            log.info("back-translation report: %s", md_path)

    # ---- predict: PT files of generated sequences --------------------------------------------------

    def on_predict_epoch_start(self) -> None:
        self._predictions = []

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        gen = self.generate(batch["gloss_ids"], batch["gloss_mask"])
        for i, name in enumerate(batch["name"]):
            self._predictions.append({"name": name, "gloss": " ".join(batch["gloss"][i]),
                                      "text": batch["text"][i],
                                      "poses": gen["poses"][i][gen["frame_mask"][i]].float().cpu().numpy()})
        return gen

    def on_predict_epoch_end(self) -> None:
        items = self._predictions
        if dist.is_available() and dist.is_initialized():
            # ShardSampler gives rank r the samples r, r + W, ...: interleave to restore the file order
            shards: list = [None] * dist.get_world_size()
            dist.all_gather_object(shards, items)
            items = [shard[i] for i in range(max(map(len, shards))) for shard in shards if i < len(shard)]
        if not self.trainer.is_global_zero:
            return
        out_dir = Path(self.hparams.predict_dir or Path(self.trainer.default_root_dir) / "predictions")
        write_pt_files(out_dir / "predict", items)
        log.info("wrote %d generated sequences to %s/predict.{skels,gloss,text,files}", len(items), out_dir)

    # ---- optimisation -----------------------------------------------------------------------------

    def configure_optimizers(self):
        # decay weight matrices only (nanoGPT's rule); the frozen VQ-VAE is not optimised
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad or name.startswith("vqvae."):
                continue
            is_matrix = p.dim() >= 2 and not name.endswith("embed.weight")  # embedding tables are not decayed
            (decay if is_matrix else no_decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr, betas=tuple(self.hparams.betas))
        factor = warmup_cosine(self.hparams.warmup_steps, self.trainer.estimated_stepping_batches,
                               self.hparams.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def write_pt_files(prefix: Path, items: list[dict]) -> None:
    """``prefix.{skels,gloss,text,files}`` from dicts with ``name``, ``gloss`` (str), ``text``, ``poses`` (T, 50, 3)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_skels(prefix.with_suffix(".skels"), [np.asarray(it["poses"]) for it in items])
    for key, suffix in (("gloss", ".gloss"), ("text", ".text"), ("name", ".files")):
        lines = [str(it[key]).replace("\n", " ") for it in items]  # one sample per line, always
        prefix.with_suffix(suffix).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _flatten_scalars(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested metric dicts -> {"a_b": float} for every numeric leaf (strings etc. are skipped)."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten_scalars(value, name + "_"))
        elif isinstance(value, (int, float)) or (isinstance(value, Tensor) and value.numel() == 1):
            flat[name] = float(value)
    return flat
