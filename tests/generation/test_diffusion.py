"""Mask-and-replace diffusion: closed forms against explicit Q_t matrices, posterior, [PAD], loss, samplers."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.codeunet import CodeUnet, GlossEncoder
from generation.diffusion import (
    MaskReplaceDiffusion,
    frames_to_tokens,
    sample_categorical,
    tokens_to_frames,
    truncate,
)

K, T = 5, 10  # codes, timesteps


C = K + 2  # + [MASK] + [PAD]


def step_matrix(diff: MaskReplaceDiffusion, t: int) -> torch.Tensor:
    """Q_t of Eq. 4 (column n = distribution of x_t given x_{t-1} = n), from the per-step α_t, γ_t."""
    a_bar, g_bar = diff.alpha_bar.double(), diff.gamma_bar.double()
    alpha = a_bar[t] / a_bar[t - 1]
    gamma = 1 - (1 - g_bar[t]) / (1 - g_bar[t - 1])
    beta = (1 - alpha - gamma) / K
    q = torch.zeros(C, C, dtype=torch.float64)
    q[:K, :K] = beta + alpha * torch.eye(K, dtype=torch.float64)
    q[K, :K] = gamma
    q[K, K] = 1.0
    q[K + 1, K + 1] = 1.0
    return q


def cumulative(diff: MaskReplaceDiffusion, t: int, s: int = 0) -> torch.Tensor:
    """Q_t ⋯ Q_{s+1} by explicit products."""
    out = torch.eye(C, dtype=torch.float64)
    for step in range(s + 1, t + 1):
        out = step_matrix(diff, step) @ out
    return out


@pytest.fixture(scope="module")
def diff() -> MaskReplaceDiffusion:
    return MaskReplaceDiffusion(K, num_timesteps=T)


def test_step_matrices_are_stochastic(diff):
    for t in range(1, T + 1):
        q = step_matrix(diff, t)
        assert (q >= 0).all()
        torch.testing.assert_close(q.sum(0), torch.ones(C, dtype=torch.float64))


@pytest.mark.parametrize("t", [1, 2, 5, T])
def test_closed_form_matches_matrix_product(diff, t):
    x0 = torch.tensor([list(range(K)) + [diff.pad_id]])  # every code and [PAD]
    probs = diff.q_probs(x0, torch.tensor([t])).exp().double()[0]  # (N, C)
    expected = cumulative(diff, t)[:, x0[0]].T  # column x0 of Q̄_t
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=1e-4)
    # Eq. 5 entries for a code x0
    a, g = diff.alpha_bar[t].item(), diff.gamma_bar[t].item()
    b = (1 - a - g) / K
    assert probs[0, 0].item() == pytest.approx(a + b, rel=1e-5)
    assert probs[0, 1].item() == pytest.approx(b, rel=1e-4)
    assert probs[0, K].item() == pytest.approx(g, rel=1e-5)
    assert probs[0, K + 1].item() < 1e-25
    assert probs[-1, K + 1].item() == pytest.approx(1.0)  # [PAD] stays [PAD]


@pytest.mark.parametrize("t,s", [(1, 0), (2, 1), (7, 6), (T, T - 1), (9, 3), (T, 0)])
def test_posterior_matches_bayes_rule(diff, t, s):
    """q(x_s | x_t, x0) = Q_{s→t}[x_t, j] Q̄_s[j, x0] / Q̄_t[x_t, x0] for every code x0 and x_t."""
    q_st, q_s, q_t = cumulative(diff, t, s), cumulative(diff, s), cumulative(diff, t)
    x0s, xts = torch.meshgrid(torch.arange(K), torch.arange(K + 1), indexing="ij")  # x_t: codes and [MASK]
    x0s, xts = x0s.reshape(1, -1), xts.reshape(1, -1)
    log_x0 = torch.nn.functional.one_hot(x0s, K).float().clamp(min=1e-30).log()
    post = diff.q_posterior(log_x0, xts, torch.tensor([t]), torch.tensor([s])).exp().double()[0]
    for n in range(xts.shape[1]):
        x0, xt = x0s[0, n].item(), xts[0, n].item()
        expected = q_st[xt, :] * q_s[:, x0] / q_t[xt, x0]
        torch.testing.assert_close(post[n], expected, atol=1e-5, rtol=1e-3)


def test_posterior_is_a_mixture_over_x0(diff):
    """Eq. 8: p(x_{t-1} | x_t) = Σ_x0 q(x_{t-1} | x_t, x0) p(x0)."""
    torch.manual_seed(0)
    t, x_t = 6, torch.tensor([[2, K]])
    p = torch.softmax(torch.randn(1, 2, K), -1)
    mixed = diff.q_posterior(p.log(), x_t, torch.tensor([t])).exp().double()
    q_st, q_s, q_t = cumulative(diff, t, t - 1), cumulative(diff, t - 1), cumulative(diff, t)
    for n, xt in enumerate(x_t[0].tolist()):
        expected = sum(p[0, n, x0].double() * q_st[xt] * q_s[:, x0] / q_t[xt, x0] for x0 in range(K))
        torch.testing.assert_close(mixed[0, n], expected, atol=1e-5, rtol=1e-3)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), t=st.integers(1, T), gap=st.integers(1, T))
def test_posterior_sums_to_one(seed, t, gap):
    diff = MaskReplaceDiffusion(K, num_timesteps=T)
    g = torch.Generator().manual_seed(seed)
    s = max(t - gap, 0)
    log_x0 = torch.log_softmax(3 * torch.randn(2, 6, K, generator=g), -1)
    x_t = torch.randint(0, K + 2, (2, 6), generator=g)
    post = diff.q_posterior(log_x0, x_t, torch.tensor([t, t]), torch.tensor([s, s]))
    assert torch.isfinite(post).all()
    torch.testing.assert_close(post.exp().sum(-1), torch.ones(2, 6), atol=1e-5, rtol=0)
    pad = x_t == diff.pad_id
    assert (post.argmax(-1)[pad] == diff.pad_id).all()
    assert (post.exp()[..., diff.pad_id][~pad] < 1e-20).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), t=st.integers(1, T), gap=st.integers(1, T), sharp=st.sampled_from([0.1, 3.0, 30.0]))
def test_reverse_step_probs_equal_the_log_space_posterior(seed, t, gap, sharp):
    """The sampler's closed-form step is q_posterior over codes and [MASK], for peaked and flat p(x0)."""
    diff = MaskReplaceDiffusion(K, num_timesteps=T)
    g = torch.Generator().manual_seed(seed)
    s = max(t - gap, 0)
    log_x0 = torch.log_softmax(sharp * torch.randn(2, 8, K, generator=g), -1)
    x_t = torch.randint(0, K + 1, (2, 8), generator=g)  # codes and [MASK]
    fast = diff.reverse_step_probs(log_x0.exp(), x_t, t, s).double()
    fast = fast / fast.sum(-1, keepdim=True)
    exact = diff.q_posterior(log_x0, x_t, torch.tensor([t, t]), torch.tensor([s, s])).exp().double()
    torch.testing.assert_close(fast, exact[..., : K + 1], atol=1e-6, rtol=1e-4)
    assert (fast[..., K][x_t < K] == 0).all()  # a code never came from [MASK]


@pytest.mark.parametrize("t,s", [(2, 1), (11, 1), (100, 90), (100, 1)])
def test_reverse_step_probs_at_the_paper_schedule(t, s):
    """K = 256, T = 100: β̄_t is ~4e-9 at t = 2, so w(x0) reaches ~1e8 in float32; still q_posterior."""
    diff = MaskReplaceDiffusion(256, num_timesteps=100)
    g = torch.Generator().manual_seed(t)
    log_x0 = torch.log_softmax(8 * torch.randn(1, 64, 256, generator=g), -1)
    x_t = torch.randint(0, 257, (1, 64), generator=g)
    fast = diff.reverse_step_probs(log_x0.exp(), x_t, t, s).double()
    exact = diff.q_posterior(log_x0, x_t, torch.tensor([t]), torch.tensor([s])).exp().double()[..., :257]
    torch.testing.assert_close(fast / fast.sum(-1, keepdim=True), exact, atol=1e-6, rtol=1e-4)


def test_sample_categorical_follows_the_weights():
    weights = torch.tensor([[0.0, 3.0, 1.0, 0.0, 1e-2, 6.0, 0.0],  # unnormalised, zeros inside and at the end
                            [0.0, 0.0, 0.0, 2.5, 0.0, 0.0, 0.0]])  # one class with mass
    draws = sample_categorical(weights.expand(20000, -1, -1), torch.Generator().manual_seed(0))  # (20000, 2)
    assert draws.shape == (20000, 2)
    freq = torch.bincount(draws[:, 0], minlength=7).double() / 20000
    torch.testing.assert_close(freq, (weights[0] / weights[0].sum()).double(), atol=0.01, rtol=0)
    assert freq[[0, 3, 6]].sum() == 0 and freq[4] > 0  # zero weight never drawn; 1e-3 of the mass still is
    assert (draws[:, 1] == 3).all()
    again = sample_categorical(weights.expand(20000, -1, -1), torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)  # a seeded generator reproduces the draws


def test_pad_never_changes_and_never_appears(diff):
    torch.manual_seed(0)
    codes = torch.randint(0, K, (4, 9, 3))
    frame_mask = torch.arange(9)[None] < torch.tensor([[9], [5], [1], [7]])
    x0, token_mask = frames_to_tokens(codes, frame_mask, diff.pad_id)
    assert (x0[~token_mask] == diff.pad_id).all()
    torch.testing.assert_close(tokens_to_frames(x0, 3)[frame_mask], codes[frame_mask])
    for t in [1, 5, T]:
        x_t = diff.q_sample(x0.repeat(20, 1), torch.full((80,), t))
        mask = token_mask.repeat(20, 1)
        assert (x_t[~mask] == diff.pad_id).all()
        assert (x_t[mask] != diff.pad_id).all()
    # at t = T almost everything is masked, at t = 1 almost nothing changes
    assert (diff.q_sample(x0, torch.full((4,), T))[token_mask] == diff.mask_id).float().mean() > 0.95
    assert (diff.q_sample(x0, torch.full((4,), 1))[token_mask] == x0[token_mask]).all()


def test_q_sample_frequencies_follow_eq5():
    diff = MaskReplaceDiffusion(4, num_timesteps=T)
    t = 5
    x0 = torch.zeros(1, 40000, dtype=torch.long)
    x_t = diff.q_sample(x0, torch.tensor([t]), generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(x_t[0], minlength=6).double() / x0.numel()
    expected = cumulative_k(diff, t)
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


def cumulative_k(diff: MaskReplaceDiffusion, t: int) -> torch.Tensor:
    a, g = diff.alpha_bar[t].item(), diff.gamma_bar[t].item()
    b = (1 - a - g) / diff.num_classes
    return torch.tensor([a + b] + [b] * (diff.num_classes - 1) + [g, 0.0], dtype=torch.float64)


def test_schedule_defaults_and_validation():
    diff = MaskReplaceDiffusion(8)
    assert diff.num_timesteps == 100
    assert diff.alpha_bar[1].item() == pytest.approx(0.99999)
    assert diff.alpha_bar[100].item() == pytest.approx(0.000009)
    assert diff.gamma_bar[1].item() == pytest.approx(0.000009)
    assert diff.gamma_bar[100].item() == pytest.approx(0.99999)
    with pytest.raises(ValueError, match="ᾱ_t \\+ γ̄_t < 1"):
        MaskReplaceDiffusion(8, alpha_end=0.5, gamma_end=0.6)
    with pytest.raises(ValueError, match="non-decreasing"):
        MaskReplaceDiffusion(8, alpha_start=0.5, alpha_end=0.9, gamma_end=0.05)
    assert diff.timesteps(None) == list(range(100, 0, -1))
    fast = diff.timesteps(10)
    assert fast[0] == 100 and fast[-1] == 1 and len(fast) == 10 and fast == sorted(fast, reverse=True)
    with pytest.raises(ValueError, match="steps"):
        diff.timesteps(0)


def test_truncation_keeps_smallest_set_reaching_r():
    lp = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()
    kept = truncate(lp, 0.7).exp()
    torch.testing.assert_close(kept, torch.tensor([[0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(truncate(lp, 0.45).exp(), torch.tensor([[0.0, 1.0, 0.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(truncate(lp, 1.0).exp(), lp.exp(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="top_r"):
        truncate(lp, 0.0)


class Oracle(torch.nn.Module):
    """A denoiser that knows x0: confident logits for the target codes."""

    def __init__(self, target: torch.Tensor, confidence: float = 30.0):
        super().__init__()
        self.target, self.confidence = target, confidence

    def forward(self, x_t, t, token_mask, **cond):
        return self.confidence * torch.nn.functional.one_hot(self.target, K).float()


def test_perfect_denoiser_has_near_zero_bound(diff):
    torch.manual_seed(0)
    x0 = torch.randint(0, K, (3, 12))
    token_mask = torch.arange(12)[None] < torch.tensor([[12], [6], [3]])
    loss, logs = diff.loss(Oracle(x0), x0, token_mask, {}, t=torch.tensor([1, 4, T]))
    assert logs["loss_vb"] < 1e-4 and logs["loss_aux"] < 1e-4 and logs["x0_acc"] == 1.0
    bad = diff.loss(Oracle((x0 + 1) % K), x0, token_mask, {}, t=torch.tensor([1, 4, T]))[0]
    assert bad > 10 * loss + 1.0


def test_loss_ignores_pad_positions(diff):
    x0 = torch.randint(0, K, (2, 9))
    token_mask = torch.arange(9)[None] < torch.tensor([[9], [4]])
    other = x0.clone()
    other[~token_mask] = (x0[~token_mask] + 2) % K
    t = torch.tensor([3, 8])
    torch.manual_seed(5)
    a = diff.loss(Oracle(x0), x0, token_mask, {}, t=t)[0]
    torch.manual_seed(5)
    b = diff.loss(Oracle(x0), other, token_mask, {}, t=t)[0]
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    with pytest.raises(ValueError, match="codes inside token_mask"):
        diff.loss(Oracle(x0), x0 + K, token_mask, {})


def test_importance_sampling_switches_after_warmup():
    diff = MaskReplaceDiffusion(K, num_timesteps=4).train()
    t, pt = diff.sample_timesteps(500, torch.device("cpu"))
    assert t.min() >= 1 and t.max() <= 4 and torch.allclose(pt, torch.full_like(pt, 0.25))
    diff.loss_count.fill_(11)
    diff.loss_history.copy_(torch.tensor([0.0, 1.0, 4.0, 9.0, 0.0], dtype=torch.float64))
    t, pt = diff.sample_timesteps(4000, torch.device("cpu"))
    expected = {1: 1 / 6, 2: 2 / 6, 3: 3 / 6}
    for step, p in expected.items():
        assert pt[t == step][0].item() == pytest.approx(p, rel=1e-4)
        assert (t == step).float().mean().item() == pytest.approx(p, abs=0.03)
    assert (t == 4).float().mean() < 0.01
    x0 = torch.randint(0, K, (2, 6))
    diff.loss(Oracle(x0), x0, torch.ones(2, 6, dtype=torch.bool), {})
    assert diff.loss_count.sum() == 11 * 5 + 2  # the step counts are updated in training


class Overflowing(Oracle):
    """The oracle, except one logit of the first sequence is +inf (a bf16 overflow)."""

    def forward(self, x_t, t, token_mask, **cond):
        logits = super().forward(x_t, t, token_mask)
        logits[0, 0, 0] = float("inf")
        return logits


def test_non_finite_loss_leaves_importance_sampling_intact():
    diff = MaskReplaceDiffusion(K, num_timesteps=4).train()
    diff.loss_count.fill_(11)
    diff.loss_history.copy_(torch.tensor([0.0, 1.0, 4.0, 9.0, 16.0], dtype=torch.float64))
    x0 = torch.randint(0, K, (2, 6))
    loss, _ = diff.loss(Overflowing(x0), x0, torch.ones(2, 6, dtype=torch.bool), {}, t=None)
    assert not loss.isfinite()  # the step NonFiniteGuard skips
    assert diff.loss_history.isfinite().all()
    assert diff.loss_count.sum() == 11 * 5 + 1  # the healthy second sequence still counts
    t, pt = diff.sample_timesteps(1000, torch.device("cpu"))  # raised on NaN probabilities before
    assert pt.isfinite().all() and t.min() >= 1 and t.max() <= 4


@pytest.mark.parametrize("steps,top_r,scale", [(None, None, None), (3, 0.86, None), (4, None, 2.0)])
def test_sampler_reproduces_oracle_codes(diff, steps, top_r, scale):
    x0 = torch.randint(0, K, (2, 9))
    token_mask = torch.arange(9)[None] < torch.tensor([[9], [6]])
    uncond = {} if scale else None
    out = diff.sample(Oracle(x0), {}, token_mask, steps=steps, top_r=top_r, guidance_scale=scale, uncond=uncond)
    assert (out.tokens[token_mask] == x0[token_mask]).all()
    assert (out.tokens[~token_mask] == diff.pad_id).all()
    assert (out.score > -1e-3).all() and (out.token_log_probs[~token_mask] == 0).all()
    with pytest.raises(ValueError, match="uncond"):
        diff.sample(Oracle(x0), {}, token_mask, guidance_scale=2.0)


def tiny_models(num_parts: int = 3):
    torch.manual_seed(0)
    encoder = GlossEncoder(12, d_model=32, heads=4, depth=1, max_len=8, dropout=0.0)
    unet = CodeUnet(
        K, num_parts, d_model=32, heads=4, num_levels=1, blocks_per_level=1, middle_blocks=1, dropout=0.0, num_timesteps=T
    )
    return encoder, unet


@pytest.mark.parametrize("num_parts", [1, 3])
def test_codeunet_sampler_returns_valid_codes(diff, num_parts):
    encoder, unet = tiny_models(num_parts)
    encoder.eval(), unet.eval()
    gloss_ids, gloss_mask = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()
    enc = encoder(gloss_ids, gloss_mask)
    frame_mask = torch.arange(7)[None] < torch.tensor([[7], [4]])
    _, token_mask = frames_to_tokens(torch.zeros(2, 7, num_parts, dtype=torch.long), frame_mask, diff.pad_id)
    guided = {"steps": 2, "guidance_scale": 3.0, "uncond": encoder.unconditional(gloss_mask)}
    for kwargs in [{}, {"steps": 3, "top_r": 0.9}, guided]:
        out = diff.sample(unet, enc.cond, token_mask, **kwargs)
        inside = out.tokens[token_mask]
        assert ((inside >= 0) & (inside < K)).all()
        assert (out.tokens[~token_mask] == diff.pad_id).all()
        assert torch.isfinite(out.score).all()


def test_short_fit_lowers_the_loss():
    diff = MaskReplaceDiffusion(K, num_timesteps=T)
    encoder, unet = tiny_models()
    gloss_ids, gloss_mask = torch.tensor([[3, 4], [5, 6]]), torch.ones(2, 2, dtype=torch.bool)
    codes = torch.randint(0, K, (2, 6, 3), generator=torch.Generator().manual_seed(3))
    x0, token_mask = frames_to_tokens(codes, torch.ones(2, 6, dtype=torch.bool), diff.pad_id)
    params = list(encoder.parameters()) + list(unet.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)

    def evaluate() -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            cond = encoder(gloss_ids, gloss_mask).cond
            return sum(diff.loss(unet, x0, token_mask, cond, t=torch.full((2,), t))[0].item() for t in (1, 3, 6, 9))

    before = evaluate()
    for _ in range(25):
        loss, _ = diff.loss(unet, x0, token_mask, encoder(gloss_ids, gloss_mask).cond)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert evaluate() < 0.7 * before
