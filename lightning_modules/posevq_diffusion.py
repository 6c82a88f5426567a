"""Stage 2 of PoseVQ-Diffusion: glosses -> Pose-VQVAE codes -> poses (paper §3.2-3.4, Table 1).

One LightningModule for the three generators of Table 1, chosen by ``method`` and built as a
``generation.code_generators.CodeGenerator``:

- ``diffusion``: mask-and-replace discrete diffusion (Eqs. 4-9) with the CodeUnet denoiser, or the
  plain Transformer of Table 2a (``network.denoiser``); full reverse diffusion (T steps) or fast
  sampling (``diffusion.sample_steps``), optional top-r truncation and classifier-free guidance.
  PoseVQ-Diffusion.
- ``mask_predict``: Mask-Predict on the same codes and denoiser (PoseVQ-MP).
- ``autoregressive``: a causal Transformer decoder over the same codes, KV-cached (PoseVQ-AR).

Settings come in groups (``production_settings``): ``network``, ``diffusion``, ``length``, ``optim``.

All three share the gloss encoder and its length head, trained jointly with weight δ (Eq. 12) on
sequential-KNN gloss lengths (Eq. 11). At inference the sequence length is the sum of the
per-gloss lengths: the ``length.candidates`` most probable totals are each decoded and the
sample the model scores best (mean token log-probability) is kept (Table 2b).

The frozen Pose-VQVAE comes from ``vqvae_ckpt`` (``--model.init_args.vqvae_ckpt PATH``). Its
weights are *kept* in this module's checkpoints: a generator only makes sense with the exact
tokenizer it was trained on, so resuming or reloading never depends on ``vqvae_ckpt`` still
holding the same weights (the file is read at construction for the architecture, then the
checkpoint's copy wins). It is excluded from the optimiser and stays in eval mode.

Targets: each sample's codes and gloss lengths are computed once, the first time its name is seen
(train, dev or test batches alike), by ``production_caches.TargetsCache``, persisted to
``<run>/cache/posevq_targets.pt``, loaded when training starts and rewritten after any epoch that
added names (rank 0 writes its own entries; under DDP other ranks fill their misses on the fly).

Logged: ``train/``, ``val/`` and ``test/`` ``loss`` (the training objective: code loss plus
length loss), ``loss_code``, ``loss_len``, ``len_acc`` and the method's own terms. Dev and test
losses draw their noise from a per-batch seed and diffusion steps uniformly, so curves compare
epoch to epoch. Each validation also generates a few dev samples (``val/gen_dtw_mje``,
``val/gen_length_error``, ``val/generated_<i>`` pictures).

Evaluation (``test``): with ``back_translator_ckpt`` set, every test batch is generated (timed)
and fed to ``ProductionEvaluator`` (WER, BLEU-1..4, DTW-MJE; rows for the generator, the
Pose-VQVAE's reconstruction of the test poses and the ground truth); the report goes to
``report_dir`` (default ``<run>/report``). ``predict`` writes the generated sequences into
``predict_dir`` (default ``<run>/predictions``) as ``production_writers`` describes: PT files
``predict.{skels,gloss,text,files}`` and pose-format files ``pose/<name>.pose``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from datamodules.tokenization import load_gloss_vocab
from generation.autoregressive import AutoregressiveDecoder
from generation.code_generators import (
    AutoregressiveGenerator,
    CodeGenerator,
    DiffusionGenerator,
    MaskPredictGenerator,
)
from generation.codeunet import CodeUnet, GlossEncoder, GlossEncoding, TransformerDenoiser
from generation.diffusion import MaskReplaceDiffusion, frames_to_tokens
from generation.length import decode_length_candidates, length_candidates
from generation.mask_predict import MaskPredict
from generation.metrics import dtw_mje
from lightning_modules.checkpoint_io import check_checkpoint, load_lightning_module
from lightning_modules.optim import adamw, warmup_cosine
from lightning_modules.pose_vqvae import PoseVQVAE
from lightning_modules.production_caches import CACHE_FILE, TargetsCache
from lightning_modules.production_settings import (
    DiffusionSettings,
    LengthSettings,
    Method,
    NetworkSettings,
    OptimSettings,
    as_settings,
    check_choice,
)
from lightning_modules.production_writers import PredictionWriter

log = logging.getLogger(__name__)

METHOD_NAMES = {"diffusion": DiffusionGenerator.table_name, "mask_predict": MaskPredictGenerator.table_name,
                "autoregressive": AutoregressiveGenerator.table_name}
VQVAE_DEMO_HINT = ("train the Pose-VQVAE first (lightning fit --config experiments/demo/pose_vqvae.yaml "
                   "writes runs/demo_pose_vqvae/checkpoints/last.ckpt) or pass --model.init_args.vqvae_ckpt PATH")


def load_frozen_vqvae(path: str) -> torch.nn.Module:
    """The Pose-VQVAE network of a ``PoseVQVAE`` checkpoint, frozen and in eval mode."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"vqvae_ckpt {path!r}: no such file; {VQVAE_DEMO_HINT}")
    model = load_lightning_module(PoseVQVAE, path, map_location="cpu").model
    model.requires_grad_(False)
    return model.eval()


def build_code_generator(method: str, network: NetworkSettings, diffusion: DiffusionSettings, num_codes: int,
                         num_parts: int, num_glosses: int, max_length: int) -> CodeGenerator:
    """The ``method``'s generator over K = ``num_codes`` codes per part."""
    n = network
    encoder = GlossEncoder(num_glosses, n.d_model, n.heads, n.encoder_depth, max_length, n.ff_mult, n.dropout)
    if method == "autoregressive":
        decoder = AutoregressiveDecoder(num_codes, num_parts, n.d_model, n.heads, n.depth, n.ff_mult, n.dropout)
        return AutoregressiveGenerator(encoder, decoder)
    if n.denoiser == "codeunet":
        denoiser = CodeUnet(num_codes, num_parts, n.d_model, n.heads, n.num_levels, n.blocks_per_level,
                            n.middle_blocks, n.ff_mult, n.dropout, diffusion.num_timesteps)
        if n.compile_denoiser:
            denoiser.compile_trunk()
    else:
        denoiser = TransformerDenoiser(num_codes, num_parts, n.d_model, n.heads, n.depth, n.ff_mult, n.dropout,
                                       diffusion.num_timesteps)
    if method == "mask_predict":
        return MaskPredictGenerator(encoder, denoiser,
                                    MaskPredict(num_codes, diffusion.num_timesteps, diffusion.mp_iterations))
    process = MaskReplaceDiffusion(num_codes, diffusion.num_timesteps, aux_weight=diffusion.aux_weight)
    return DiffusionGenerator(encoder, denoiser, process, diffusion.sample_steps, diffusion.top_r,
                              diffusion.guidance_scale, diffusion.cond_drop_prob)


class PoseVQDiffusion(LightningModule):
    """Gloss-to-pose generator over frozen Pose-VQVAE codes (see the module docstring)."""

    def __init__(
        self,
        vqvae_ckpt: str,
        gloss_vocab: str = "synthsign",
        method: Method = "diffusion",  # Table 1
        max_length: int = 300,  # P of Eq. 12 (longest sequence, PT's max_sent_length); also caps totals
        network: NetworkSettings = NetworkSettings(),
        diffusion: DiffusionSettings = DiffusionSettings(),
        length: LengthSettings = LengthSettings(),
        optim: OptimSettings = OptimSettings(),
        num_logged_samples: int = 3,  # dev samples generated and drawn each validation
        back_translator_ckpt: str | None = None,
        language: str = "de",  # back-translation text language (BLEU tokenisation)
        report_dir: str | None = None,  # default <run>/report
        predict_dir: str | None = None,  # default <run>/predictions
        predict_formats: list[str] | None = None,  # "skels", "pose"; None: both if pose-format is installed
        predict_fps: float = 25.0,  # frame rate of written .pose files: PHOENIX-2014T's videos
    ) -> None:
        super().__init__()
        check_choice("PoseVQDiffusion", "method", method, Method)
        network, diffusion = as_settings(NetworkSettings, network), as_settings(DiffusionSettings, diffusion)
        self.length, self.optim = as_settings(LengthSettings, length), as_settings(OptimSettings, optim)
        if max_length < 1:
            raise ValueError(f"PoseVQDiffusion: max_length must be >= 1, got {max_length}")
        if diffusion.guidance_scale is not None and method != "diffusion":
            raise ValueError(f"PoseVQDiffusion: diffusion.guidance_scale needs method='diffusion', got {method!r}")
        if network.compile_denoiser and method == "autoregressive":
            raise ValueError("PoseVQDiffusion: network.compile_denoiser compiles the CodeUnet trunk, which "
                             "method='autoregressive' does not have")
        self.save_hyperparameters()
        # checkpoints hold plain containers only (they load with weights_only=True); as_settings reads them back
        self.hparams.update(network=asdict(network), diffusion=asdict(diffusion), length=asdict(self.length),
                            optim=asdict(self.optim))
        self.prediction_writer = PredictionWriter(predict_formats, predict_fps)
        self.vqvae = load_frozen_vqvae(vqvae_ckpt)
        self.num_parts = self.vqvae.num_parts
        self.gloss_vocab = load_gloss_vocab(gloss_vocab)
        self.code_generator = build_code_generator(method, network, diffusion, self.vqvae.num_codes, self.num_parts,
                                                   len(self.gloss_vocab), max_length)
        self.targets_cache = TargetsCache(self.length.knn_k, self.length.knn_l)
        self.evaluator = None  # a ProductionEvaluator while testing with back_translator_ckpt
        self._logged_batch: dict | None = None

    def train(self, mode: bool = True) -> "PoseVQDiffusion":
        super().train(mode)
        self.vqvae.eval()  # frozen tokenizer: no dropout, ever
        return self

    # ---- training objective -----------------------------------------------------------------------

    def losses(self, batch: dict) -> dict[str, Tensor]:
        """The method's code loss plus the length loss (Eq. 12): ``loss``, ``loss_code``, ``loss_len``,
        ``len_acc`` and the method's own terms."""
        codes, gloss_lengths = self.targets_cache.lookup(batch, self.vqvae)  # (B, T, P), (B, G)
        gloss_mask = batch["gloss_mask"]
        enc = self.code_generator.encode(batch["gloss_ids"], gloss_mask)
        tokens, token_mask = frames_to_tokens(codes, batch["pose_mask"], self.vqvae.num_codes + 1)  # (B, T·P), [PAD]
        loss_code, extras = self.code_generator.loss(tokens, token_mask, enc)
        head = self.code_generator.encoder.length_head
        loss_len = head.loss(enc.length_logits, gloss_lengths, gloss_mask, self.length.weight)
        predicted = enc.length_logits.argmax(-1) + 1  # (B, G); class j is length j + 1
        len_acc = ((predicted == gloss_lengths.clamp(1, head.max_len)) & gloss_mask).sum() / gloss_mask.sum()
        return {"loss": loss_code + loss_len, "loss_code": loss_code.detach(), "loss_len": loss_len.detach(),
                "len_acc": len_acc, **extras}

    def _log_losses(self, split: str, out: dict[str, Tensor], batch_size: int) -> None:
        for key, value in out.items():
            self.log(f"{split}/{key}", value.detach(), prog_bar=key == "loss", batch_size=batch_size,
                     sync_dist=split != "train")

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.losses(batch)
        self._log_losses("train", out, len(batch["name"]))
        return out["loss"]

    def _eval_losses(self, split: str, batch: dict, batch_idx: int) -> None:
        """Log the losses under a per-batch seed (diffusion steps, noise, masks), so dev curves compare like with like."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(batch_idx)
            out = self.losses(batch)
        self._log_losses(split, out, len(batch["name"]))

    # ---- the targets cache across a run ------------------------------------------------------------

    def cache_path(self) -> Path:
        return Path(self.trainer.default_root_dir) / "cache" / CACHE_FILE

    def on_train_start(self) -> None:
        self.targets_cache.load(self.cache_path(), self.vqvae)

    def on_train_epoch_end(self) -> None:
        if self.trainer.is_global_zero:
            self.targets_cache.save(self.cache_path(), self.vqvae)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # the checkpoint's VQ-VAE weights replace the ones read from vqvae_ckpt: forget derived state
        self.targets_cache.clear()

    # ---- generation -------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_codes(
        self, enc: GlossEncoding, totals: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decode each total-length candidate totals (B, k) and keep, per sample, the one the model
        scores best: codes (B, T, P) (0 at padding), frame_mask (B, T), score (B,)."""
        def sample(token_mask: Tensor):  # (B, T·P)
            return self.code_generator.sample(enc, token_mask, generator)

        codes, frame_mask, score = decode_length_candidates(sample, totals, self.num_parts)
        return codes.masked_fill(~frame_mask[..., None], 0), frame_mask, score  # [PAD] -> a valid id for the decoder

    @torch.no_grad()
    def generate(
        self, gloss_ids: Tensor, gloss_mask: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Glosses (B, G) -> ``poses`` (B, T, 50, 3), ``frame_mask`` (B, T), ``codes`` (B, T, P) (0 at
        padding), ``score`` (B,) and the length ``candidates`` (B, k) that were decoded."""
        was_training = self.training
        self.eval()
        try:
            enc = self.code_generator.encode(gloss_ids, gloss_mask)
            totals = length_candidates(enc.length_logits, gloss_mask, self.length.candidates)  # (B, k)
            # the head can predict up to M·P frames; no training sequence is longer than P
            totals = totals.clamp(1, self.hparams.max_length)
            codes, frame_mask, score = self.sample_codes(enc, totals, generator)
            poses = self.vqvae.decode(codes, frame_mask)
        finally:
            self.train(was_training)
        return {"poses": poses, "frame_mask": frame_mask, "codes": codes, "score": score, "candidates": totals}

    # ---- validation: losses on every batch, a few generated samples drawn --------------------------

    def on_validation_epoch_start(self) -> None:
        self._logged_batch = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_losses("val", batch, batch_idx)
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
        self._eval_losses("test", batch, batch_idx)
        if self.evaluator is None:
            return
        start = time.perf_counter()
        gen = self.generate(batch["gloss_ids"], batch["gloss_mask"])
        seconds = (time.perf_counter() - start) / len(batch["name"])
        codes, _ = self.targets_cache.lookup(batch, self.vqvae)  # the reference's own codes, cached by the losses
        reconstruction = self.vqvae.decode(codes, batch["pose_mask"])  # the tokenizer's ceiling row
        steps = self.code_generator.steps(gen["frame_mask"].sum(1) * self.num_parts)
        self.evaluator.update(list(batch["name"]), gen["poses"], gen["frame_mask"], batch["poses"],
                              batch["pose_mask"], gloss_refs=list(batch["gloss"]), text_refs=list(batch["text"]),
                              seconds_per_sequence=seconds, steps=steps, reconstruction=reconstruction)

    def on_test_epoch_end(self) -> None:
        if self.evaluator is None:
            return
        for key, value in self.evaluator.compute().items():
            self.log(f"test/{key}", float(value))  # compute() is already reduced over ranks
        if self.trainer.is_global_zero:
            out_dir = self.hparams.report_dir or str(Path(self.trainer.default_root_dir) / "report")
            md_path, _ = self.evaluator.write_report(out_dir, self.code_generator.name)
            log.info("back-translation report: %s", md_path)

    # ---- predict: generated sequences as files -----------------------------------------------------

    def on_predict_epoch_start(self) -> None:
        self.prediction_writer.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        gen = self.generate(batch["gloss_ids"], batch["gloss_mask"])
        self.prediction_writer.add(list(batch["name"]), batch["gloss"], batch["text"], gen["poses"], gen["frame_mask"])
        return gen

    def on_predict_epoch_end(self) -> None:
        out_dir = Path(self.hparams.predict_dir or Path(self.trainer.default_root_dir) / "predictions")
        written = self.prediction_writer.write(out_dir)
        if written:  # global rank 0
            log.info("wrote the generated sequences: %s", ", ".join(map(str, written)))

    # ---- optimisation -----------------------------------------------------------------------------

    def configure_optimizers(self):
        # decay weight matrices only (nanoGPT's rule); the frozen VQ-VAE is not optimised
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad or name.startswith("vqvae."):
                continue
            is_matrix = p.dim() >= 2 and not name.endswith("embed.weight")  # embedding tables are not decayed
            (decay if is_matrix else no_decay).append(p)
        optim = self.optim
        optimizer = adamw(
            [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=optim.lr, betas=tuple(optim.betas))
        factor = warmup_cosine(optim.warmup_steps, self.trainer.estimated_stepping_batches, optim.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
