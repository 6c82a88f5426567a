"""PoseVQ-AR: teacher-forced loss, KV-cached decoding equal to uncached logits."""
from __future__ import annotations

import pytest
import torch

from generation.autoregressive import AutoregressiveDecoder
from generation.transformer import Attention

K = 6


def make(num_parts: int = 3) -> AutoregressiveDecoder:
    torch.manual_seed(0)
    return AutoregressiveDecoder(K, num_parts, d_model=32, heads=4, depth=2, dropout=0.0).eval()


def conditioning(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    memory = torch.randn(batch, 3, 32, generator=g)
    gloss_mask = torch.tensor([[True, True, True], [True, True, False]])[:batch]
    return memory, gloss_mask


def test_forward_is_causal():
    model = make()
    memory, gloss_mask = conditioning()
    tokens = torch.randint(0, K, (2, 12))
    token_mask = torch.ones(2, 12, dtype=torch.bool)
    logits = model(tokens, token_mask, memory, gloss_mask)
    assert logits.shape == (2, 12, K)
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % K
    other = model(changed, token_mask, memory, gloss_mask)
    torch.testing.assert_close(other[:, :8], logits[:, :8])  # position n sees tokens < n only
    assert not torch.allclose(other[:, 8:], logits[:, 8:])


@pytest.mark.parametrize("num_parts", [1, 3])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_generation_matches_uncached_logits(num_parts, temperature):
    model = make(num_parts)
    memory, gloss_mask = conditioning()
    token_mask = torch.arange(5 * num_parts)[None] < torch.tensor([[5 * num_parts], [3 * num_parts]])
    generator = torch.Generator().manual_seed(0)
    out = model.generate(memory, gloss_mask, token_mask, temperature=temperature, generator=generator)
    assert (out.tokens[~token_mask] == model.pad_id).all()
    inside = out.tokens[token_mask]
    assert ((inside >= 0) & (inside < K)).all()
    log_probs = model(out.tokens, token_mask, memory, gloss_mask).log_softmax(-1)
    chosen = log_probs.gather(-1, out.tokens.clamp(max=K - 1).unsqueeze(-1)).squeeze(-1) * token_mask
    torch.testing.assert_close(out.token_log_probs, chosen, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.score, chosen.sum(1) / token_mask.sum(1), atol=1e-5, rtol=1e-5)
    if temperature == 0.0:
        assert torch.equal(out.tokens[token_mask], log_probs.argmax(-1)[token_mask])


def test_cached_greedy_decoding_equals_uncached_greedy_decoding_token_for_token():
    """The sampling benchmark's AR baseline is the cached decoder: it must be the same decoder as
    re-running the whole prefix through the uncached forward pass at every step."""
    model = make(3)
    memory, gloss_mask = conditioning()
    token_mask = torch.arange(24)[None] < torch.tensor([[24], [15]])  # 8 and 5 frames of 3 parts
    cached = model.generate(memory, gloss_mask, token_mask).tokens
    tokens = torch.full_like(cached, model.pad_id)
    for n in range(token_mask.shape[1]):  # uncached greedy: full forward over the prefix decoded so far
        logits = model(tokens[:, : n + 1], token_mask[:, : n + 1], memory, gloss_mask)
        tokens[:, n] = torch.where(token_mask[:, n], logits[:, n].argmax(-1), model.pad_id)
    assert torch.equal(cached, tokens)


def test_attention_cache_appends_keys():
    torch.manual_seed(0)
    attn = Attention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    full = attn(x, causal=True)
    cache: dict = {}
    steps = [attn(x[:, n : n + 1], causal=True, cache=cache) for n in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-6, rtol=1e-5)
    assert cache["k"].shape == (2, 4, 5, 4)


def test_short_fit_lowers_the_loss():
    model = make()
    model.train()
    memory, gloss_mask = conditioning()
    tokens = torch.randint(0, K, (2, 9), generator=torch.Generator().manual_seed(2))
    token_mask = torch.arange(9)[None] < torch.tensor([[9], [6]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = model.loss(tokens, token_mask, memory, gloss_mask)[0].item()
    for _ in range(25):
        loss, logs = model.loss(tokens, token_mask, memory, gloss_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["loss_ce"] < 0.5 * before
    with pytest.raises(ValueError, match="temperature"):
        model.generate(memory, gloss_mask, token_mask, temperature=-1.0)
