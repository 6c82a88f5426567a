"""Geo-Sign (and its Uni-Sign pose baseline): ST-GCN pose encoder -> mT5, regularised in training by
a hyperbolic contrastive loss (`hyperbolic: pooled | token`; `null` is the Uni-Sign baseline).

    lightning fit --config experiments/geosign_token.yaml

Training loss = α·CE + (1 − α)·L_hyp (supplement Eq. 9). Validation, test and predict translate with
beam search through mT5 alone; the hyperbolic branch is never run there (it only feeds the
once-per-validation Poincaré-disk picture, outside generation).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from datamodules.keypoints import PART_NAMES
from datamodules.tokenization import load_tokenizer
from translation.hyperbolic_branch import COMPILE_OPTIONS, HyperbolicBranch, LossBlend
from translation.language_model import SignLanguageModel
from translation.stgcn import PoseEncoder

from .init_weights import load_initial_weights
from .media import log_figure, log_table
from .metrics import translation_scores
from .optim import JointOptimizer, adam, adamw, optimizer_steps_per_epoch, warmup_cosine

# ISO 639-1 code of the target text -> the language named in mT5's prompt
PROMPT_LANGUAGES = {"zh": "Chinese", "de": "German", "en": "English"}


class GeoSignTranslator(LightningModule):
    """Pose -> text translation with optional hyperbolic regularisation.

    Args:
        tokenizer: tokenizer spec for `datamodules.tokenization.load_tokenizer` (a local mT5
            directory, a tokenizer.json, or "synthsign-zh"/"synthsign-de").
        language: ISO code of the target text ("zh" for CSL-Daily, "de" for PHOENIX-2014T), the same
            value as the DataModule's; it names the prompt's language and picks the BLEU protocol
            (character-level for Chinese).
        mt5_pretrained: a local directory or a Hugging Face hub id of mT5 weights; or
        mt5_config: an `MT5Config` dict for random weights (demos, tests).
        init_from: weights to start from (`lightning_modules.init_weights`): a released Uni-Sign or
            Geo-Sign checkpoint, or a signlab `.ckpt`, as a path or `hf://owner/repo/file`. Applied
            once when a run starts, never over a resumed `--ckpt_path` (whose weights win).
        init_strict: stop before training unless every tensor fits (False: load what fits, log the rest).
        encoder: `PoseEncoder` keyword arguments (the output width is mT5's d_model).
        hyperbolic: "token", "pooled" or None (the Uni-Sign pose baseline).
        hyp_dim, init_c, learn_c, alpha_init, hyp_label_smoothing, frechet_temperature,
            frechet_iters, hyp_init_scale, gather_negatives: the hyperbolic branch (see
            `HyperbolicBranch`).
        compile_hyperbolic: `torch.compile` the (training-only) hyperbolic branch.
        lr, betas, eps, weight_decay, warmup_epochs, min_lr: AdamW on Euclidean parameters with
            linear warm-up then cosine to `min_lr` (Table 3).
        hyp_lr: Adam on the hyperbolic-branch parameters (constant). Table 3 names Riemannian Adam:
            every branch parameter is Euclidean (tangent vectors, matrices, scales, logits), where
            Riemannian Adam is Adam step for step, so torch's fused Adam runs it (equal to
            geoopt's to float rounding, `tests/lightning_modules/test_optim.py`), in one pass
            instead of geoopt's per-parameter Python loop.
        num_beams, max_new_tokens: beam search at inference.
        predictions_file: where `predict` writes name / hypothesis / reference (TSV); defaults to
            `<run>/predictions.tsv`.
    """

    def __init__(self,
                 tokenizer: str = "synthsign-zh",
                 language: str = "zh",
                 mt5_pretrained: str | None = None,
                 mt5_config: dict | None = None,
                 init_from: str | None = None,
                 init_strict: bool = True,
                 encoder: dict | None = None,
                 hyperbolic: str | None = "token",  # hyp_text_cmp, Table 3
                 hyp_dim: int = 256,  # d_hyp, Table 3
                 init_c: float = 1.5,  # c_init, Table 3
                 learn_c: bool = True,
                 alpha_init: float = 0.7,  # α_init, Table 3
                 label_smoothing: float = 0.2,  # CE label smoothing, Table 3
                 hyp_label_smoothing: float = 0.2,  # label_smoothing_hyp, Table 3
                 frechet_temperature: float = 1.0,  # λ_w, Eq. 4
                 frechet_iters: int | None = None,
                 hyp_init_scale: float = 1.0,  # tangent scale s at initialisation, listing 4
                 gather_negatives: bool = False,
                 compile_hyperbolic: bool = False,
                 lr: float = 3e-5,  # AdamW lr, Table 3
                 betas: tuple[float, float] = (0.9, 0.999),  # opt-betas, Table 3
                 eps: float = 1e-8,  # opt-eps, Table 3
                 weight_decay: float = 0.01,  # Table 3
                 warmup_epochs: float = 5,  # warmup-epochs, Table 3
                 min_lr: float = 1e-6,  # min-lr, Table 3
                 hyp_lr: float = 1e-3,  # hyp_lr (Riemannian Adam = Adam here), Table 3
                 num_beams: int = 4,
                 max_new_tokens: int = 100,  # max_tgt_len, Table 3
                 num_logged_samples: int = 8,
                 max_disk_points: int = 1000,  # points in the Poincaré-disk picture (supplement Fig. 3)
                 predictions_file: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if (mt5_pretrained is None) == (mt5_config is None):
            raise ValueError("give exactly one of mt5_pretrained (local weights) or mt5_config (random weights)")
        if language not in PROMPT_LANGUAGES:
            raise ValueError(f"language must be one of {sorted(PROMPT_LANGUAGES)}, got {language!r}")
        self.tokenizer = load_tokenizer(tokenizer)
        self.lm = SignLanguageModel(self.tokenizer, PROMPT_LANGUAGES[language], pretrained=mt5_pretrained, config=mt5_config,
                                    label_smoothing=label_smoothing)
        self.encoder = PoseEncoder(out_dim=self.lm.d_model, **(encoder or {}))
        part_dim = (encoder or {}).get("hidden", (64, 64, 128, 256))[-1]
        self.hyperbolic = None if hyperbolic is None else HyperbolicBranch(
            hyperbolic, part_dim=part_dim, text_dim=self.lm.d_model, hyp_dim=hyp_dim, init_c=init_c,
            learn_c=learn_c, label_smoothing=hyp_label_smoothing, frechet_temperature=frechet_temperature,
            frechet_iters=frechet_iters, init_scale=hyp_init_scale, gather_negatives=gather_negatives)
        if compile_hyperbolic and self.hyperbolic is not None:
            self.hyperbolic.compile(**COMPILE_OPTIONS)  # in place, so checkpoint keys do not change
        self.blend = None if hyperbolic is None else LossBlend(alpha_init)
        self._outputs: dict[int, list[dict]] = {}
        self._disk_points: list[Tensor] = []
        # True once `init_from` was applied, or when the run resumes a checkpoint (the CLI sets it).
        self.init_from_done = False

    def setup(self, stage: str) -> None:
        # Here rather than in __init__: before the strategy wraps the model (DeepSpeed copies the
        # weights into its optimiser), and never when a resumed checkpoint will overwrite them.
        if self.hparams.init_from and not self.init_from_done:
            load_initial_weights(self, self.hparams.init_from, strict=self.hparams.init_strict,
                                 share_hands=self.encoder.share_hands)
            self.init_from_done = True

    # ---------------------------------------------------------------------------------- training

    def progress(self) -> float:
        """Optimizer steps done / total optimizer steps (Lightning's global_step counts optimizer steps)."""
        total = self.trainer.estimated_stepping_batches
        return self.global_step / total if total and total != float("inf") else 0.0

    def _encode(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        return self.encoder({p: batch[p] for p in PART_NAMES}, batch["frame_mask"])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        embeds, part_features = self._encode(batch)  # (B, T, d_model), {p: (B, T, C)}
        out = self.lm(embeds, batch["frame_mask"], batch["target_ids"], batch["target_mask"])
        # The branch's diagnostics reach a logger only every log_every_n_steps (Lightning's own
        # monitors gate on the same flag), and each costs ops and a self.log (~0.1–0.3 ms): they
        # are computed and logged on those steps only; train/loss_ce and train/loss every step.
        connector = getattr(self._trainer, "_logger_connector", None) if self._trainer is not None else None
        diagnostics = connector is None or connector.should_update_logs
        logs = {"train/loss_ce": out.loss}
        loss = out.loss
        if self.hyperbolic is not None:
            loss_hyp, hyp_logs = self.hyperbolic(part_features, batch["frame_mask"], out.decoder_hidden,
                                                 batch["target_mask"], diagnostics=diagnostics)
            alpha = self.blend(self.progress())
            loss = torch.lerp(loss_hyp, out.loss, alpha)  # α·L_CE + (1 − α)·L_hyp (Eq. 9) in one op
            if diagnostics:
                logs |= {"train/loss_hyp": loss_hyp, "hyp/alpha": alpha} | {f"hyp/{k}": v for k, v in hyp_logs.items()}
        logs["train/loss"] = loss
        self.log_dict({k: v.detach().float() for k, v in logs.items()}, batch_size=embeds.shape[0],
                      prog_bar=False)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=embeds.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        skipped = getattr(self.trainer.datamodule, "num_skipped", None)
        if skipped is not None:  # samples dropped by on_bad_sample: skip, summed over ranks
            self.log("data/skipped", float(skipped), reduce_fx="sum", sync_dist=True)

    # ------------------------------------------------------------------------------- inference

    @torch.no_grad()
    def translate(self, batch: dict) -> list[str]:
        """Beam-search translations of a batch; mT5 only (no geometry runs here)."""
        embeds, _ = self._encode(batch)
        return self.lm.generate(embeds, batch["frame_mask"], num_beams=self.hparams.num_beams,
                                max_new_tokens=self.hparams.max_new_tokens)

    def _evaluation_step(self, batch: dict, dataloader_idx: int) -> Tensor:
        """Beam-search the batch into the epoch's outputs; returns the pose embeddings (B, T, d_model)."""
        embeds, part_features = self._encode(batch)
        hyps = self.lm.generate(embeds, batch["frame_mask"], num_beams=self.hparams.num_beams,
                                max_new_tokens=self.hparams.max_new_tokens)
        self._outputs.setdefault(dataloader_idx, []).extend(
            {"name": n, "hyp": h, "ref": r} for n, h, r in zip(batch["name"], hyps, batch["text"]))
        if self.hyperbolic is not None and sum(len(p) for p in self._disk_points) < self.hparams.max_disk_points:
            pooled = self.hyperbolic.pool_parts(part_features, batch["frame_mask"])  # (B, P, C)
            self._disk_points.append(pooled.float().cpu())  # projected once at epoch end
        return embeds

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        embeds = self._evaluation_step(batch, dataloader_idx)
        # The dev set's teacher-forced CE (label-smoothed as train/loss_ce): the overfitting curve
        # BLEU cannot draw, for one more mT5 pass beside beam search's max_new_tokens decoder steps.
        out = self.lm(embeds, batch["frame_mask"], batch["target_ids"], batch["target_mask"])
        self.log("val/loss_ce", out.loss.detach().float(), batch_size=embeds.shape[0], sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, dataloader_idx)

    def _gathered(self, idx: int) -> list[dict]:
        """Every rank's outputs for loader `idx`, each sample once (sorted by name)."""
        local = self._outputs.get(idx, [])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shards = [None] * dist.get_world_size()
            dist.all_gather_object(shards, local)
            local = [o for shard in shards for o in shard]
        return sorted({o["name"]: o for o in local}.values(), key=lambda o: o["name"])

    def _score(self, outputs: list[dict]) -> dict[str, float]:
        return translation_scores([o["hyp"] for o in outputs], [o["ref"] for o in outputs],
                                  self.hparams.language)

    def on_validation_epoch_end(self) -> None:
        outputs = self._gathered(0)
        if outputs:
            scores = self._score(outputs)
            # Every rank has the same gathered scores, so no further reduction is needed.
            self.log_dict({f"val/{k}": v for k, v in scores.items()}, rank_zero_only=False, sync_dist=False)
            rows = [[o["name"], o["ref"], o["hyp"]] for o in outputs[: self.hparams.num_logged_samples]]
            log_table(self, "val/samples", ["name", "reference", "hypothesis"], rows)
        self._log_poincare_disk()
        self._outputs.clear()
        self._disk_points.clear()

    def on_test_epoch_end(self) -> None:
        names = self._split_names()
        for idx in sorted(self._outputs) or [0]:
            outputs = self._gathered(idx)
            if outputs:
                scores = self._score(outputs)
                self.log_dict({f"test/{names[idx]}/{k}": v for k, v in scores.items()}, sync_dist=False)
        self._outputs.clear()
        self._disk_points.clear()

    def _split_names(self) -> dict[int, str]:
        splits = getattr(self.trainer.datamodule, "test_splits", None) if self._trainer else None
        return dict(enumerate(splits or ["test"]))

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        return [{"name": n, "hyp": h, "ref": r} for n, h, r in zip(batch["name"], self.translate(batch), batch["text"])]

    def on_predict_epoch_end(self) -> None:
        rows = [row for batch_rows in self.trainer.predict_loop.predictions for row in batch_rows]
        if self.trainer.world_size > 1:
            shards = [None] * self.trainer.world_size
            dist.all_gather_object(shards, rows)
            rows = [r for shard in shards for r in shard]
        if not self.trainer.is_global_zero:
            return
        path = Path(self.hparams.predictions_file or Path(self.trainer.default_root_dir) / "predictions.tsv")
        path.parent.mkdir(parents=True, exist_ok=True)
        unique = sorted({r["name"]: r for r in rows}.values(), key=lambda r: r["name"])
        with path.open("w", encoding="utf-8") as f:
            f.write("name\thypothesis\treference\n")
            f.writelines(f"{r['name']}\t{r['hyp']}\t{r['ref']}\n" for r in unique)

    def _log_poincare_disk(self) -> None:
        if self.hyperbolic is None or not self._disk_points or not self.trainer.is_global_zero:
            return
        from .poincare_disk import poincare_disk_figure

        pooled = torch.cat(self._disk_points)[: self.hparams.max_disk_points].to(self.device)  # (N, P, C)
        with torch.no_grad():
            h = self.hyperbolic.project_parts(pooled)  # (N, P, D)
            fig = poincare_disk_figure(h.cpu(), self.hyperbolic.curvature().detach().cpu(), PART_NAMES,
                                       title=f"part embeddings, epoch {self.current_epoch}")
        log_figure(self, "val/poincare_disk", fig)

    # ------------------------------------------------------------------------------ optimisers

    def hyperbolic_parameters(self) -> list[torch.nn.Parameter]:
        """Everything the branch's Adam trains: the branch (projections, attention, curvature, τ,
        margin, τ_attn) and the α logit."""
        if self.hyperbolic is None:
            return []
        return list(self.hyperbolic.parameters()) + list(self.blend.parameters())

    def configure_optimizers(self):
        hp = self.hparams
        hyp_ids = {id(p) for p in self.hyperbolic_parameters()}
        euclidean = [p for p in self.parameters() if id(p) not in hyp_ids and p.requires_grad]
        decay = [p for p in euclidean if p.dim() >= 2]
        no_decay = [p for p in euclidean if p.dim() < 2]  # biases, norms, part embedding
        optimizers = [adamw([{"params": decay, "weight_decay": hp.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)]
        if hyp_ids:
            hyp = [(n, p) for n, p in self.named_parameters() if id(p) in hyp_ids and p.requires_grad]
            # Matrices get weight decay; biases (the grouped part projection's are 2-D), curvature,
            # τ, margin, α and the log-scales never do.
            matrix = [p.dim() >= 2 and not n.endswith("bias") for n, p in hyp]
            optimizers.append(adam([{"params": [p for (_, p), m in zip(hyp, matrix) if m],
                                     "weight_decay": hp.weight_decay, "name": "hyperbolic"},
                                    {"params": [p for (_, p), m in zip(hyp, matrix) if not m],
                                     "weight_decay": 0.0, "name": "hyperbolic"}], lr=hp.hyp_lr))
        optimizer = JointOptimizer(optimizers)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(hp.warmup_epochs * optimizer_steps_per_epoch(self.trainer))
        euclidean_factor = warmup_cosine(warmup, total, hp.min_lr / hp.lr)
        factors = [euclidean_factor, euclidean_factor] + ([lambda step: 1.0] * 2 if hyp_ids else [])
        scheduler = LambdaLR(optimizer, lr_lambda=factors)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
