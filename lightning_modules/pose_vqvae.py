"""Stage 1 of PoseVQ-Diffusion: train the Pose-VQVAE tokenizer (paper §3.1, Eq. 1, Table 2a).

Batches are the production dicts of ``GlossToPoseDataModule``: ``poses`` (B, T, 50, 3) float,
``pose_mask`` (B, T) bool, ``name`` list[str] (other keys are ignored).

Loss (Eq. 1): Σ_parts mean-over-valid-frames ‖s_part − s̃_part‖ + β ‖sg[z] − e‖²; the codebook term
is replaced by EMA updates. The paper writes ‖·‖ without saying which norm; the public G2P-DDM code
uses L1, so ``recon_loss="l1"`` is the default ("mse" is available). Validation reports the Table 2a
metric, MSE over valid frames and all 150 values (``val/rec_mse``), whatever the training loss, and
the training loss itself on the dev set (``val/loss``).
"""
from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from datamodules.keypoints import PT_NUM_JOINTS, PT_PART_NAMES, PT_PARTS
from generation.pose_vqvae import VARIANTS, PoseVQVAEModel, part_errors
from lightning_modules.optim import adamw, warmup_cosine


class PoseVQVAE(LightningModule):
    """Pose-VQVAE with logging; ``encode`` / ``decode`` and ``num_codes`` / ``num_parts`` for stage 2.

    Rebuild a trained one with ``PoseVQVAE.load_from_checkpoint(path)``.
    """

    def __init__(
        self,
        variant: str = "separate",  # "separate" (3 patches) or "joint" (1 token per frame), Table 2a
        hidden: int = 256,  # patch embedding / Transformer width h, §4.1
        layers: int = 3,  # Transformer layers in the encoder and in the decoder, §4.1
        heads: int = 4,
        codebook_size: int = 2048,  # codebook size V, §4.1 (supplement Table 1: 3 × 1024)
        shared_codebook: bool = False,  # one book for all parts instead of one per part
        beta: float = 0.25,  # commitment weight β, Eq. 1 (supplement Table 1)
        decay: float = 0.99,  # codebook EMA decay (VideoGPT / G2P-DDM)
        dead_threshold: float = 1.0,  # restart codes whose EMA count falls below this (VideoGPT)
        lr: float = 3e-4,  # AdamW learning rate, supplement Table 1
        weight_decay: float = 0.01,
        warmup_steps: int = 5000,  # linear warm-up, §4.1 ("after 5000 iterations of warmup")
        recon_loss: str = "l1",  # ‖·‖ of Eq. 1: L1 as in the public G2P-DDM code, or "mse"
        spl_hidden: int = 64,  # SPL per-joint hidden width (Aksan et al. 2019 configs)
        dropout: float = 0.0,
        log_images_every_n_epochs: int = 1,
        num_image_samples: int = 3,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"PoseVQVAE: variant must be one of {VARIANTS}, got {variant!r}")
        if recon_loss not in ("l1", "mse"):
            raise ValueError(f"PoseVQVAE: recon_loss must be 'l1' or 'mse', got {recon_loss!r}")
        self.save_hyperparameters()
        self.model = PoseVQVAEModel(variant, hidden, layers, heads, codebook_size, shared_codebook,
                                    decay, dead_threshold, spl_hidden, dropout)
        # validation-epoch accumulators, summed over batches and ranks at epoch end
        self._part_sq_err: Tensor | None = None  # (3,) per-part MSE × valid frames, summed over batches
        self._num_valid: Tensor | None = None  # valid frames seen
        self._code_counts: Tensor | None = None  # (P, K) code histogram
        self._image_batch: dict[str, Tensor] | None = None

    @property
    def num_codes(self) -> int:
        return self.model.num_codes

    @property
    def num_parts(self) -> int:
        return self.model.num_parts

    def encode(self, poses: Tensor, mask: Tensor) -> Tensor:
        """(B, T, 50, 3), (B, T) bool -> codes (B, T, num_parts) long, 0 at padded frames."""
        return self.model.encode(poses, mask)

    def decode(self, codes: Tensor, mask: Tensor) -> Tensor:
        """codes (B, T, num_parts), (B, T) bool -> poses (B, T, 50, 3), 0 at padded frames."""
        return self.model.decode(codes, mask)

    def forward(self, poses: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return self.model(poses, mask)

    # ---- steps ----------------------------------------------------------------------------------

    def _loss(self, out: dict[str, Tensor], poses: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 1 and its reconstruction term."""
        rec = part_errors(out["recon"], poses, mask, self.hparams.recon_loss).sum()  # Σ over parts
        return rec + self.hparams.beta * out["commit"], rec

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        poses, mask = batch["poses"], batch["pose_mask"]
        out = self.model(poses, mask)
        loss, rec = self._loss(out, poses, mask)
        bs = poses.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/rec", rec, batch_size=bs)
        self.log("train/commit", out["commit"], batch_size=bs)  # unweighted ‖sg[z] − e‖²
        return loss

    def on_validation_epoch_start(self) -> None:
        self._part_sq_err = torch.zeros(len(PT_PART_NAMES), device=self.device)
        self._num_valid = torch.zeros((), device=self.device)
        self._code_counts = torch.zeros(self.num_parts, self.num_codes, device=self.device)
        self._image_batch = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        poses, mask = batch["poses"], batch["pose_mask"]
        out = self.model(poses, mask)
        self.log("val/loss", self._loss(out, poses, mask)[0], batch_size=poses.shape[0], sync_dist=True)
        n_valid = mask.sum()
        self._part_sq_err += part_errors(out["recon"], poses, mask, "mse") * n_valid
        self._num_valid += n_valid
        offsets = torch.arange(self.num_parts, device=self.device) * self.num_codes  # one histogram per part
        flat = (out["codes"][mask] + offsets).flatten()  # (N * P,)
        self._code_counts += torch.bincount(flat, minlength=self.num_parts * self.num_codes).view_as(self._code_counts)
        if batch_idx == 0:
            k = self.hparams.num_image_samples
            self._image_batch = {"poses": poses[:k], "recon": out["recon"][:k], "mask": mask[:k],
                                 "name": list(batch.get("name", []))[:k]}

    def on_validation_epoch_end(self) -> None:
        reduce = self.trainer.strategy.reduce  # sums over ranks (identity on one device)
        part_mse = reduce(self._part_sq_err, reduce_op="sum") / reduce(self._num_valid, reduce_op="sum").clamp(min=1)
        joints = torch.tensor([len(PT_PARTS[name]) for name in PT_PART_NAMES], device=self.device)
        # Table 2a metric: mean over valid frames and all 150 values = joint-weighted mean of the parts
        self.log("val/rec_mse", (part_mse * joints).sum() / PT_NUM_JOINTS, sync_dist=True)
        for name, value in zip(PT_PART_NAMES, part_mse):
            self.log(f"val/rec_mse_{name}", value, sync_dist=True)
        counts = reduce(self._code_counts, reduce_op="sum")  # (P, K)
        probs = counts / counts.sum(-1, keepdim=True).clamp(min=1)
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1)  # clamp: 0·log 0 = 0
        self.log("vq/perplexity", entropy.exp().mean(), sync_dist=True)  # mean over parts
        self.log("vq/usage", (counts > 0).float().mean(), sync_dist=True)
        self.log("vq/dead_codes", float(self.model.codebook.dead_codes()), sync_dist=True)
        self._log_images()

    def _log_images(self) -> None:
        every = self.hparams.log_images_every_n_epochs
        if (self.logger is None or not self.trainer.is_global_zero or self._image_batch is None
                or every <= 0 or self.trainer.sanity_checking or self.current_epoch % every):
            return
        from generation.render import render_strip
        from lightning_modules.media import log_figure

        batch = self._image_batch
        for i in range(batch["poses"].shape[0]):
            valid = batch["mask"][i]
            rows = {"ground truth": batch["poses"][i][valid].float().cpu().numpy(),
                    "reconstruction": batch["recon"][i][valid].float().cpu().numpy()}
            name = batch["name"][i] if i < len(batch["name"]) else f"sample {i}"
            log_figure(self, f"val/reconstruction_{i}", render_strip(rows, title=name))

    # ---- optimisation ---------------------------------------------------------------------------

    def configure_optimizers(self):
        # decay weight matrices only (Linear weights, SPL per-joint weights); not biases, norms or the
        # part embeddings (nanoGPT's rule)
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            is_matrix = p.dim() >= 2 and name.rsplit(".", 1)[-1] in ("weight", "w_ctx", "w_anc", "w_out")
            (decay if is_matrix else no_decay).append(p)
        optimizer = adamw(
            [{"params": decay, "weight_decay": self.hparams.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr, betas=(0.9, 0.96))  # β1, β2 of §4.1
        # linear warm-up, then cosine to 0 over the run (flat if the run length is unknown, i.e. inf)
        factor = warmup_cosine(self.hparams.warmup_steps, self.trainer.estimated_stepping_batches, 0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
