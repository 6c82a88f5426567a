"""mT5 as the translation head of Geo-Sign / Uni-Sign.

The embedded prompt "Translate sign language video to {language}: " goes before the pose
embeddings in the encoder input; the decoder is trained with label-smoothed cross-entropy and
decodes with beam search. mT5 is loaded from a local directory or a Hugging Face Hub id (the
standard cache, downloading when online; only the cache with ``HF_HUB_OFFLINE=1``) and is never
re-initialised afterwards -- the released Geo-Sign code does re-initialise it and so silently
trains from random weights -- or is built with random weights from a config dict (demos and
tests). Either way it trains with its dropout on and generates with it off.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import MT5Config, MT5ForConditionalGeneration, PreTrainedTokenizerFast
from transformers.utils import is_offline_mode

from datamodules.hub import hub_id_failure, is_hub_id

PROMPT = "Translate sign language video to {language}: "
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
IGNORE_INDEX = -100  # target positions excluded from the loss (cross_entropy's ignore_index)


def build_mt5(pretrained: str | None = None, config: dict | None = None) -> MT5ForConditionalGeneration:
    """mT5 with pretrained weights, or random weights from ``MT5Config(**config)``; exactly one.

    ``pretrained`` is a local directory (config.json and weights, as ``save_pretrained`` writes
    them) or a Hugging Face Hub id such as ``google/mt5-base``, loaded the way any transformers
    program loads it: from the standard Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``),
    downloading what is missing into it when online. With ``HF_HUB_OFFLINE=1`` only the cache is
    read, and a model missing from it raises FileNotFoundError saying what to download.

    The model comes back in train mode, like any freshly built module. ``from_pretrained`` returns
    it in eval mode, and Lightning keeps each submodule's mode when training starts, so a
    fine-tuning run would otherwise train with every dropout of mT5 switched off.
    """
    if (pretrained is None) == (config is None):
        raise ValueError("build_mt5 needs exactly one of pretrained (weights) or config (random weights)")
    if config is not None:
        return MT5ForConditionalGeneration(MT5Config(**config))
    path = Path(pretrained).expanduser()
    if path.exists():
        if not (path.is_dir() and (path / "config.json").is_file()
                and any((path / name).is_file() for name in WEIGHT_FILES)):
            raise FileNotFoundError(
                f"mT5 weights {str(path)!r}: expected a directory holding config.json and one of {WEIGHT_FILES}")
        return MT5ForConditionalGeneration.from_pretrained(str(path)).train()
    if not is_hub_id(pretrained):
        raise FileNotFoundError(f"mT5 weights {pretrained!r}: no such directory (nor a Hugging Face Hub id "
                                "such as google/mt5-base)")
    try:
        # No local_files_only: transformers reads HF_HUB_OFFLINE itself and then stays in the cache.
        return MT5ForConditionalGeneration.from_pretrained(pretrained).train()
    except OSError as err:
        raise FileNotFoundError(hub_id_failure("mT5 weights", pretrained, err, is_offline_mode())) from err


@dataclass
class LanguageModelOutput:
    loss: Tensor  # () label-smoothed CE over non-pad target tokens
    logits: Tensor  # (B, L, vocab)
    decoder_hidden: Tensor  # (B, L, d_model) last decoder layer, teacher forced


class SignLanguageModel(nn.Module):
    """mT5 fed with [prompt embeddings; pose embeddings].

    Args:
        tokenizer: the target-text tokenizer; its pad/eos ids must match mT5's.
        language: the prompt's target language, e.g. "Chinese" or "German".
        pretrained / config: see :func:`build_mt5`.
        label_smoothing: CE label smoothing (0.2 in Uni-Sign / Geo-Sign).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, language: str, pretrained: str | None = None,
                 config: dict | None = None,
                 label_smoothing: float = 0.2,  # CE label smoothing (label_smoothing), Table 3
                 ) -> None:
        super().__init__()
        if not language or not language.strip():
            raise ValueError("language must be a non-empty name such as 'Chinese' or 'German'")
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer must define pad and eos tokens")
        if config is not None:
            # A random model takes its special ids from the tokenizer; mT5 starts decoding at pad.
            # The vocabulary defaults to the tokenizer's (MT5Config's own default is mT5's 250k).
            config = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                      "eos_token_id": tokenizer.eos_token_id, "decoder_start_token_id": tokenizer.pad_token_id,
                      **config}
        self.model = build_mt5(pretrained, config)
        self.tokenizer = tokenizer
        self.language = language
        self.label_smoothing = label_smoothing
        self._check_vocabulary(resize=config is not None)
        prompt_ids = tokenizer(PROMPT.format(language=language))["input_ids"]
        self.register_buffer("prompt_ids", torch.tensor(prompt_ids, dtype=torch.long), persistent=False)

    def _check_vocabulary(self, resize: bool) -> None:
        cfg, tok = self.model.config, self.tokenizer
        if cfg.pad_token_id != tok.pad_token_id or cfg.eos_token_id != tok.eos_token_id:
            raise ValueError(f"tokenizer pad/eos ids ({tok.pad_token_id}, {tok.eos_token_id}) differ from "
                             f"mT5's ({cfg.pad_token_id}, {cfg.eos_token_id})")
        vocab = self.model.get_input_embeddings().num_embeddings
        if vocab >= len(tok):
            return
        if not resize:
            raise ValueError(f"the tokenizer has {len(tok)} tokens but the pretrained mT5 only {vocab} embeddings")
        self.model.resize_token_embeddings(len(tok))

    @property
    def d_model(self) -> int:
        """Width the pose embeddings must have."""
        return self.model.config.d_model

    def embed_prompt(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Prompt embeddings (B, P, d_model) and their all-True mask (B, P)."""
        embeds = self.model.get_input_embeddings()(self.prompt_ids)  # (P, d_model)
        mask = torch.ones(batch_size, len(self.prompt_ids), dtype=torch.bool, device=embeds.device)
        return embeds.expand(batch_size, -1, -1), mask

    def encoder_inputs(self, pose_embeds: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """[prompt; poses]: (B, P + T, d_model) embeddings and (B, P + T) long attention mask."""
        if pose_embeds.dim() != 3 or pose_embeds.shape[-1] != self.d_model:
            raise ValueError(f"pose_embeds must be (B, T, {self.d_model}), got {tuple(pose_embeds.shape)}")
        if frame_mask.shape != pose_embeds.shape[:2]:
            raise ValueError(f"frame_mask {tuple(frame_mask.shape)} does not match pose_embeds {tuple(pose_embeds.shape[:2])}")
        prompt, prompt_mask = self.embed_prompt(pose_embeds.shape[0])
        embeds = torch.cat([prompt.to(pose_embeds.dtype), pose_embeds], dim=1)
        mask = torch.cat([prompt_mask, frame_mask.bool()], dim=1).long()
        return embeds, mask

    def forward(self, pose_embeds: Tensor, frame_mask: Tensor, target_ids: Tensor,
                target_mask: Tensor) -> LanguageModelOutput:
        """Teacher-forced pass. target_ids (B, L) end with eos; target_mask (B, L) is False on pad."""
        embeds, mask = self.encoder_inputs(pose_embeds, frame_mask)
        labels = target_ids.masked_fill(~target_mask.bool(), IGNORE_INDEX)  # (B, L)
        # Decoder input = targets shifted right after the start token; pads stay after the real
        # tokens, so the causal mask keeps them from influencing real positions.
        decoder_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_ids,
                         output_hidden_states=True)
        loss = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(),
                               ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing)
        return LanguageModelOutput(loss=loss, logits=out.logits, decoder_hidden=out.decoder_hidden_states[-1])

    @torch.no_grad()
    def generate(self, pose_embeds: Tensor, frame_mask: Tensor,
                 num_beams: int = 4,  # --num_beams, Geo-Sign / Uni-Sign generation
                 max_new_tokens: int = 100,  # max_tgt_len, Table 3
                 ) -> list[str]:
        """Beam-search translations (Uni-Sign: 4 beams, at most 100 new tokens), special tokens removed.

        mT5 runs in eval mode (no dropout) whatever mode the caller is in -- Lightning's evaluation
        loops switch it already, but a sample decoded from a training step would otherwise be
        decoded with dropout -- and every module gets its own mode back afterwards.
        """
        embeds, mask = self.encoder_inputs(pose_embeds, frame_mask)
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            ids = self.model.generate(inputs_embeds=embeds, attention_mask=mask, num_beams=num_beams,
                                      max_new_tokens=max_new_tokens)
        finally:
            for module, training in modes:
                module.training = training
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)
