"""Geo-Sign models for tests: a seconds-sized one with random batches for it, and mT5-base's
architecture for the paper-sized model built on the meta device."""
from __future__ import annotations

import torch

from datamodules.keypoints import PART_NAMES, PART_NODES
from lightning_modules.geosign import GeoSignTranslator

TINY_MT5 = dict(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)
TINY_ENCODER = dict(hidden=(8, 8, 16, 16), temporal_blocks=1)
# google/mt5-base's architecture (config.json on the hub), used with random weights.
MT5_BASE = dict(vocab_size=250112, d_model=768, d_ff=2048, d_kv=64, num_layers=12, num_decoder_layers=12,
                num_heads=12, feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def tiny_model(hyperbolic="token", **kw) -> GeoSignTranslator:
    torch.manual_seed(0)
    return GeoSignTranslator(tokenizer="synthsign-zh", mt5_config={"vocab_size": 8, **TINY_MT5}, hyperbolic=hyperbolic,
                             hyp_dim=8, encoder=TINY_ENCODER, num_beams=2, max_new_tokens=4, **kw)


def random_batch(b=4, t=10, l=6, vocab=40, seed=0) -> dict:
    """A translation batch (datamodules/batches.py's keys) of random poses and target ids."""
    g = torch.Generator().manual_seed(seed)
    batch = {p: torch.randn(b, t, PART_NODES[p], 3, generator=g) for p in PART_NAMES}
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    batch["frame_mask"] = torch.arange(t) < lengths[:, None]
    batch["target_ids"] = torch.randint(3, vocab, (b, l), generator=g)
    batch["target_mask"] = torch.arange(l) < torch.randint(2, l + 1, (b,), generator=g)[:, None]
    batch["target_ids"] = batch["target_ids"].masked_fill(~batch["target_mask"], 0)
    batch["name"] = [f"s{seed}_{i}" for i in range(b)]
    batch["text"] = ["一二三"] * b
    batch["gloss"] = [["A"]] * b
    return batch
