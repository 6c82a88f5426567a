"""PoseVQ-MP: Mask-Predict training loss and iterative re-masking decoder."""
from __future__ import annotations

import pytest
import torch

from generation.codeunet import CodeUnet, GlossEncoder
from generation.diffusion import frames_to_tokens
from generation.mask_predict import MaskPredict

K, T = 5, 10


class Recorder(torch.nn.Module):
    """Denoiser stub: fixed logits, records what it was called with."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits, self.calls = logits, []

    def forward(self, x_t, t, token_mask, **cond):
        self.calls.append((x_t.clone(), t.clone()))
        return self.logits


def test_loss_masks_between_one_and_all_valid_tokens():
    mp = MaskPredict(K, num_timesteps=T)
    x0 = torch.randint(0, K, (64, 9))
    token_mask = torch.arange(9)[None] < torch.randint(1, 10, (64, 1))
    stub = Recorder(torch.zeros(64, 9, K))
    loss, logs = mp.loss(stub, x0, token_mask, {}, generator=torch.Generator().manual_seed(0))
    x_in, t = stub.calls[0]
    masked = x_in == mp.mask_id
    assert (x_in[~token_mask] == mp.pad_id).all() and not masked[~token_mask].any()
    num = masked.sum(1)
    assert (num >= 1).all() and (num <= token_mask.sum(1)).all()
    assert (x_in[token_mask & ~masked] == x0[token_mask & ~masked]).all()
    ratio = num.float() / token_mask.sum(1)
    assert torch.equal(t, (ratio * T).ceil().long().clamp(1, T))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(float(K))).item(), rel=1e-5)  # uniform logits


def test_decoding_remasks_least_confident_tokens():
    mp = MaskPredict(K, num_timesteps=T, iterations=3)
    torch.manual_seed(0)
    logits = torch.randn(2, 12, K) * 3
    token_mask = torch.arange(12)[None] < torch.tensor([[12], [6]])
    stub = Recorder(logits)
    out = mp.sample(stub, {}, token_mask)
    assert len(stub.calls) == 3
    first, second = stub.calls[0][0], stub.calls[1][0]
    assert (first[token_mask] == mp.mask_id).all()
    # iteration 2 re-masks L·(3−1)/3 tokens: the least confident ones
    assert (second == mp.mask_id).sum(1).tolist() == [8, 4]
    conf = logits.log_softmax(-1).max(-1).values
    for b, n in enumerate([8, 4]):
        valid = token_mask[b].nonzero().squeeze(1)
        worst = valid[conf[b, valid].argsort()[:n]]
        assert (second[b, worst] == mp.mask_id).all()
    best = logits.argmax(-1)
    assert torch.equal(out.tokens[token_mask], best[token_mask])  # fixed logits: re-prediction agrees
    assert (out.tokens[~token_mask] == mp.pad_id).all()
    torch.testing.assert_close(out.score, (conf * token_mask).sum(1) / token_mask.sum(1))


def test_codeunet_mask_predict_fits_and_decodes_valid_codes():
    torch.manual_seed(0)
    mp = MaskPredict(K, num_timesteps=T, iterations=4)
    encoder = GlossEncoder(12, d_model=32, heads=4, depth=1, max_len=8, dropout=0.0)
    unet = CodeUnet(K, 3, d_model=32, heads=4, num_levels=1, blocks_per_level=1, middle_blocks=1, dropout=0.0,
                    num_timesteps=T)
    gloss_ids, gloss_mask = torch.tensor([[3, 4], [5, 6]]), torch.ones(2, 2, dtype=torch.bool)
    codes = torch.randint(0, K, (2, 5, 3))
    x0, token_mask = frames_to_tokens(codes, torch.tensor([[1] * 5, [1] * 3 + [0] * 2]).bool(), K + 1)
    opt = torch.optim.Adam(list(encoder.parameters()) + list(unet.parameters()), lr=3e-3)

    def evaluate() -> float:
        with torch.no_grad():
            cond = encoder(gloss_ids, gloss_mask).cond
            return mp.loss(unet, x0, token_mask, cond, generator=torch.Generator().manual_seed(1))[0].item()

    before = evaluate()
    for _ in range(25):
        loss, _ = mp.loss(unet, x0, token_mask, encoder(gloss_ids, gloss_mask).cond)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert evaluate() < 0.7 * before
    out = mp.sample(unet.eval(), encoder.eval()(gloss_ids, gloss_mask).cond, token_mask)
    inside = out.tokens[token_mask]
    assert ((inside >= 0) & (inside < K)).all() and (out.tokens[~token_mask] == mp.pad_id).all()
    with pytest.raises(ValueError, match="iterations"):
        MaskPredict(K, iterations=0)
