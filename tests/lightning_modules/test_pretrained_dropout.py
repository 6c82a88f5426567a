"""Fine-tuning from saved mT5 weights trains with every dropout on, and evaluates with it off.

`from_pretrained` returns a model in eval mode, and Lightning (>= 2.2) keeps each submodule's mode
when training starts: without care a run from real weights trains with all of mT5's dropout off.
"""
from __future__ import annotations

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader
from transformers import MT5Config, MT5ForConditionalGeneration

from datamodules.keypoints import PART_NAMES, PART_NODES
from datamodules.tokenization import load_tokenizer
from lightning_modules.geosign import GeoSignTranslator

TINY_MT5 = dict(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16, dropout_rate=0.1)
TINY_ENCODER = dict(hidden=(8, 8, 16, 16), temporal_blocks=1)


def saved_mt5(directory) -> str:
    """A small random mT5 saved as `save_pretrained` saves google/mt5-base, sized for synthsign-zh."""
    tokenizer = load_tokenizer("synthsign-zh")
    torch.manual_seed(0)
    config = MT5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False, **TINY_MT5)
    MT5ForConditionalGeneration(config).save_pretrained(directory)
    return str(directory)


def batch(seed: int, b: int = 2, t: int = 6, l: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {p: torch.randn(b, t, PART_NODES[p], 3, generator=g) for p in PART_NAMES}
    out["frame_mask"] = torch.ones(b, t, dtype=torch.bool)
    out["target_ids"] = torch.randint(3, 50, (b, l), generator=g)
    out["target_mask"] = torch.ones(b, l, dtype=torch.bool)
    out.update(name=[f"s{seed}_{i}" for i in range(b)], text=["一二三"] * b, gloss=[["A"]] * b)
    return out


class _Modes(Callback):
    """Each module's `training` flag at every training and validation batch."""

    def __init__(self) -> None:
        self.train: list[list[bool]] = []
        self.val: list[list[bool]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.train.append([m.training for m in module.modules()])

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        self.val.append([m.training for m in module.modules()])


def test_pretrained_mt5_trains_with_dropout_and_evaluates_without(tmp_path):
    model = GeoSignTranslator(tokenizer="synthsign-zh", mt5_pretrained=saved_mt5(tmp_path / "mt5"),
                              hyperbolic="token", hyp_dim=8, encoder=TINY_ENCODER, num_beams=2, max_new_tokens=3)
    n_dropout = sum(isinstance(m, torch.nn.Dropout) for m in model.lm.model.modules())
    assert n_dropout > 5 and model.lm.model.config.dropout_rate == 0.1

    generating: list[bool] = []  # mT5's mode each time beam search runs
    hf_generate = model.lm.model.generate

    def recording_generate(*args, **kwargs):
        generating.append(any(m.training for m in model.lm.model.modules()))
        return hf_generate(*args, **kwargs)

    model.lm.model.generate = recording_generate
    modes = _Modes()
    trainer = Trainer(max_steps=2, val_check_interval=1, limit_val_batches=1, num_sanity_val_steps=1,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[modes], default_root_dir=tmp_path)
    trainer.fit(model, DataLoader([batch(0), batch(1)], batch_size=None),
                DataLoader([batch(2)], batch_size=None))

    names = [name or "<GeoSignTranslator>" for name, _ in model.named_modules()]
    assert len(modes.train) == 2 and len(modes.val) >= 2  # sanity check + one validation after step 1
    for step, flags in enumerate(modes.train):  # the first step, and the step after a validation
        in_eval = [n for n, training in zip(names, flags) if not training]
        assert in_eval == [], f"training step {step}: {len(in_eval)} modules in eval mode, e.g. {in_eval[:5]}"
    for flags in modes.val:
        assert not any(flags), "validation must run every module in eval mode"
    assert generating and not any(generating), "beam search must run with dropout off"


def test_generate_runs_in_eval_mode_and_restores_the_callers_mode(tmp_path):
    """Beam search outside Lightning's loops (e.g. a sample logged from a training step) is
    deterministic too, and leaves the modules in the mode it found them in."""
    model = GeoSignTranslator(tokenizer="synthsign-zh", mt5_pretrained=saved_mt5(tmp_path / "mt5"),
                              hyperbolic=None, encoder=TINY_ENCODER, num_beams=2, max_new_tokens=3)
    model.train()
    data = batch(0)
    torch.manual_seed(1)
    first = model.translate(data)
    torch.manual_seed(2)
    assert model.translate(data) == first  # different RNG state: dropout would change the beams
    assert all(m.training for m in model.modules())
    model.eval()
    assert model.translate(data) == first
    assert not any(m.training for m in model.modules())
