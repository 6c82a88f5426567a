"""Back-translation evaluator for sign production (paper §4.1, "Evaluation Criteria").

A ``SignTransformer`` trained on ground-truth PT poses to recognise glosses (CTC) and translate
to text at once, as Sign Language Transformers (neccam/slt: recognition and translation loss
weights 1.0, lr 1e-3). Generated poses are then scored by how well it reads them back: gloss
WER (Levenshtein, 0-100, ``lightning_modules.metrics.gloss_wer``) and BLEU-1..4 / ROUGE-L of the
text (``translation_scores``), the columns of the paper's Table 1.

Batches are the production dicts of ``GlossToPoseDataModule`` (``poses``, ``pose_mask``,
``gloss_ids``, ``gloss_mask``, ``gloss``, ``text``, ``name``). Under DDP every rank decodes its
shard and the hypotheses are gathered (``all_gather_object``) before scoring, so each sample
counts once. Rebuild a trained one with ``BackTranslator.load_from_checkpoint(path)``.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from datamodules.tokenization import GlossVocab, load_gloss_vocab, load_tokenizer
from lightning_modules.media import log_table
from lightning_modules.metrics import gloss_wer, translation_scores
from lightning_modules.optim import adamw, warmup_cosine
from translation.ctc import ctc_beam_decode, ctc_greedy_decode
from translation.sign_transformer import SignTransformer

CTC_BLANK = GlossVocab.PAD  # <pad> never occurs in a target, so it doubles as the CTC blank


class BackTranslator(LightningModule):
    """Poses -> (glosses, text). ``translate`` is the entry point for evaluating generated poses."""

    def __init__(self, gloss_vocab: str = "synthsign", tokenizer: str = "synthsign-de",
                 d_model: int = 256, heads: int = 4, encoder_layers: int = 3, decoder_layers: int = 3,
                 dropout: float = 0.1, downsample: int = 2,
                 recognition_weight: float = 1.0,  # λ_R, SLT's recognition loss weight
                 translation_weight: float = 1.0,  # λ_T, SLT's translation loss weight
                 lr: float = 1e-3,  # SLT's learning rate
                 weight_decay: float = 1e-3, warmup_steps: int = 200, min_lr_ratio: float = 0.05,
                 beam_size: int = 5,  # CTC beam, as G2P-DDM's ctcdecode(beam_width=5)
                 max_text_len: int = 60, language: str = "de", num_logged_samples: int = 8):
        super().__init__()
        self.save_hyperparameters()
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if recognition_weight < 0 or translation_weight < 0 or recognition_weight + translation_weight == 0:
            raise ValueError("recognition_weight and translation_weight must be >= 0 and not both 0")
        self.gloss_vocab = load_gloss_vocab(gloss_vocab)
        self.tokenizer = load_tokenizer(tokenizer)
        self.model = SignTransformer(
            num_glosses=len(self.gloss_vocab), num_tokens=len(self.tokenizer), d_model=d_model,
            heads=heads, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
            dropout=dropout, downsample=downsample, pad_token_id=self.tokenizer.pad_token_id)
        self._outputs: list[dict] = []

    # ---- losses -------------------------------------------------------------------------------

    def _text_targets(self, texts: list[str]) -> Tensor:
        """Tokenised texts (B, L) ending in eos, padded with the pad id, on this device."""
        ids = self.tokenizer(texts, padding=True, truncation=True, max_length=self.hparams.max_text_len,
                             return_tensors="pt")["input_ids"]
        return ids.to(self.device)

    def losses(self, batch: dict) -> dict[str, Tensor]:
        """``ctc`` (summed over a sequence, averaged over the batch, as SLT), ``ce`` (per token),
        and their weighted sum ``loss``; also the model outputs for decoding."""
        targets = self._text_targets(batch["text"])
        out = self.model(batch["poses"], batch["pose_mask"], targets)
        log_probs = out["gloss_log_probs"].float().transpose(0, 1)  # (T', B, V) for ctc_loss
        gloss_mask = batch["gloss_mask"]
        # zero_infinity: a sequence shorter than its glosses (after downsampling) has no CTC
        # alignment; its infinite loss would otherwise poison the batch
        ctc = F.ctc_loss(log_probs, batch["gloss_ids"][gloss_mask], out["frame_mask"].sum(-1),
                         gloss_mask.sum(-1), blank=CTC_BLANK, reduction="sum", zero_infinity=True)
        ctc = ctc / len(batch["poses"])
        ce = F.cross_entropy(out["text_logits"].flatten(0, 1).float(), targets.flatten(),
                             ignore_index=self.tokenizer.pad_token_id)
        loss = self.hparams.recognition_weight * ctc + self.hparams.translation_weight * ce
        return {"loss": loss, "ctc": ctc, "ce": ce, **out}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        losses = self.losses(batch)
        bs = len(batch["poses"])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bs)
        self.log("train/loss_ctc", losses["ctc"], batch_size=bs)
        self.log("train/loss_ce", losses["ce"], batch_size=bs)
        return losses["loss"]

    # ---- decoding -----------------------------------------------------------------------------

    def _decode(self, memory: Tensor, frame_mask: Tensor, gloss_log_probs: Tensor
                ) -> tuple[list[list[str]], list[str]]:
        lengths = frame_mask.sum(-1)
        if self.hparams.beam_size > 1:
            ids = ctc_beam_decode(gloss_log_probs, lengths, CTC_BLANK, self.hparams.beam_size)
        else:
            ids = ctc_greedy_decode(gloss_log_probs, lengths, CTC_BLANK)
        glosses = [self.gloss_vocab.decode(seq) for seq in ids]
        tokens = self.model.greedy_text(memory, frame_mask, self.hparams.max_text_len,
                                        self.tokenizer.eos_token_id)
        texts = self.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)
        return glosses, [t.strip() for t in texts]

    @torch.no_grad()
    def translate(self, poses: Tensor, pose_mask: Tensor) -> tuple[list[list[str]], list[str]]:
        """Back-translate poses (B, T, 50, 3) with mask (B, T): (gloss sequences, texts), in eval mode."""
        was_training = self.training
        self.eval()
        try:
            poses, pose_mask = poses.to(self.device, torch.float32), pose_mask.to(self.device, torch.bool)
            memory, frame_mask = self.model.encode(poses, pose_mask)
            return self._decode(memory, frame_mask, self.model.gloss_log_probs(memory))
        finally:
            self.train(was_training)

    # ---- evaluation ---------------------------------------------------------------------------

    def _eval_step(self, batch: dict, split: str) -> None:
        losses = self.losses(batch)
        bs = len(batch["poses"])
        self.log(f"{split}/loss", losses["loss"], batch_size=bs, sync_dist=True)
        self.log(f"{split}/loss_ctc", losses["ctc"], batch_size=bs, sync_dist=True)
        self.log(f"{split}/loss_ce", losses["ce"], batch_size=bs, sync_dist=True)
        glosses, texts = self._decode(losses["memory"], losses["frame_mask"], losses["gloss_log_probs"])
        for name, gloss_ref, text_ref, gloss_hyp, text_hyp in zip(
                batch["name"], batch["gloss"], batch["text"], glosses, texts):
            self._outputs.append({"name": name, "gloss_ref": list(gloss_ref), "gloss_hyp": gloss_hyp,
                                  "text_ref": text_ref, "text_hyp": text_hyp})

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _gathered(self) -> list[dict]:
        """Every rank's decoded samples, each once (sorted by name)."""
        local = self._outputs
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shards = [None] * dist.get_world_size()
            dist.all_gather_object(shards, local)
            local = [o for shard in shards for o in shard]
        return sorted({o["name"]: o for o in local}.values(), key=lambda o: o["name"])

    def score(self, outputs: list[dict]) -> dict[str, float]:
        """``wer`` (gloss WER) and ``bleu1..4`` / ``rougeL`` of the texts, all 0-100."""
        return {"wer": gloss_wer([o["gloss_hyp"] for o in outputs], [o["gloss_ref"] for o in outputs]),
                **translation_scores([o["text_hyp"] for o in outputs], [o["text_ref"] for o in outputs],
                                     self.hparams.language)}

    def _end_epoch(self, split: str) -> None:
        outputs = self._gathered()
        self._outputs = []
        if not outputs:
            return
        # every rank holds the same gathered outputs, so the scores need no further reduction
        self.log_dict({f"{split}/{k}": v for k, v in self.score(outputs).items()}, sync_dist=False)
        rows = [[o["name"], " ".join(o["gloss_ref"]), " ".join(o["gloss_hyp"]), o["text_ref"], o["text_hyp"]]
                for o in outputs[:self.hparams.num_logged_samples]]
        log_table(self, f"{split}/samples", ["name", "gloss ref", "gloss hyp", "text ref", "text hyp"], rows)

    def on_validation_epoch_end(self) -> None:
        self._end_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._end_epoch("test")

    # ---- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self):
        # decay weight matrices only, not biases, norms or the token embedding (nanoGPT's rule)
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2 and "token_embed" not in n]
        decay_ids = {id(p) for p in decay}
        no_decay = [p for p in self.parameters() if id(p) not in decay_ids]
        optimizer = adamw([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=self.hparams.lr)
        warmup, total = self.hparams.warmup_steps, self.trainer.estimated_stepping_batches
        if math.isfinite(total):
            factor = warmup_cosine(warmup, int(total), self.hparams.min_lr_ratio)
        else:  # no step or epoch limit: warm up, then keep the learning rate
            def factor(step: int) -> float:
                return min(1.0, (step + 1) / max(1, warmup))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
