"""Mask-and-replace discrete diffusion over Pose-VQVAE codes (PoseVQ-Diffusion §3.2, Eqs. 4-9).

Token states: K code ids [0, K), then [MASK] = K and [PAD] = K + 1 (the paper's V + 2 states
with V = K). A sequence is frames × parts flattened (`frames_to_tokens`); part p's codes live in
the same index space [0, K) for every p, and the denoiser tells the parts apart by position
(`transformer.CodeEmbedding`, `transformer.PartHead`), so a uniform resample of a hand token
stays a hand code. The denoiser predicts x0 over the K codes only.

All probabilities are handled in log space, in the spirit of VQ-Diffusion and diffusers'
`scheduling_vq_diffusion.py`, but every transition is applied exactly in O(K) per token:
a mask-and-replace matrix with keep α, uniform β and mask γ maps a vector v to
    codes: α·v_k + β·Σ_codes v,   [MASK]: γ·Σ_codes v + v_mask,   [PAD]: v_pad,
and the product of such matrices from step s to step t is again one, with
    α_{s→t} = ᾱ_t / ᾱ_s,   1 − γ_{s→t} = (1 − γ̄_t) / (1 − γ̄_s),   β_{s→t} = (1 − α − γ) / K.
The same formula gives the one-step Q_t (s = t − 1), the closed form Q̄_t (s = 0, Eq. 5) and the
skipped-step posteriors of fast sampling. The sampler's own step (`reverse_step_probs`) is the
one exception: there x_t holds only codes and [MASK], the posterior is a few products of
probabilities that cannot underflow, and it is drawn from by inverting its CDF.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# log(1e-30): stands in for log 0 so sums and KLs stay finite; exp(-69) is negligible next to
# any probability the model can produce, and float32 still represents it (min normal ~1e-38)
LOG_ZERO = -69.0776

Denoiser = Callable[..., torch.Tensor]  # (x_t (B, N), t (B,), token_mask (B, N), **cond) -> logits (B, N, K)


class Generated(NamedTuple):
    """A sampler's output: tokens (B, N) long ([PAD] outside the mask), the log-probability the
    model gave each chosen token (B, N) (0 at [PAD]) and the per-sequence score (B,): their mean."""

    tokens: torch.Tensor
    token_log_probs: torch.Tensor
    score: torch.Tensor


def frames_to_tokens(codes: torch.Tensor, frame_mask: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """codes (B, T, P) long, frame_mask (B, T) bool -> tokens (B, T·P) with [PAD] outside the mask,
    token_mask (B, T·P). Frame t's parts are tokens t·P … t·P + P − 1."""
    if codes.dim() != 3 or frame_mask.shape != codes.shape[:2]:
        raise ValueError(
            f"codes must be (B, T, P) and frame_mask (B, T); got {tuple(codes.shape)}, {tuple(frame_mask.shape)}"
        )
    token_mask = frame_mask.bool().unsqueeze(-1).expand_as(codes).flatten(1)  # (B, T·P)
    return codes.flatten(1).masked_fill(~token_mask, pad_id), token_mask


def tokens_to_frames(tokens: torch.Tensor, num_parts: int) -> torch.Tensor:
    """tokens (B, T·P) -> codes (B, T, P)."""
    if tokens.shape[1] % num_parts:
        raise ValueError(f"{tokens.shape[1]} tokens do not split into frames of {num_parts} parts")
    return tokens.unflatten(1, (-1, num_parts))


def log_onehot(x: torch.Tensor, num_states: int) -> torch.Tensor:
    """x (...,) long -> log one-hot (..., num_states) with LOG_ZERO for the zeros."""
    return F.one_hot(x, num_states).float().clamp(min=1e-30).log()  # 1e-30: see LOG_ZERO


def gumbel_argmax(log_probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample a class index from (possibly unnormalised) log-probs (..., C) -> (...,)."""
    u = torch.rand(log_probs.shape, generator=generator, device=log_probs.device)
    # clamp keeps both logs finite when u hits 0 or rounds to 1 in float32
    gumbel = -torch.log(-torch.log(u.clamp(1e-30, 1.0 - 1e-7)))
    return (log_probs + gumbel).argmax(dim=-1)


def sample_categorical(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw a class index from non-negative, unnormalised weights (..., C) -> (...,) by inverting
    the CDF: one uniform per row where Gumbel-argmax needs C uniforms and two logs (about 9x
    faster at C = 258, the sampler's hot spot). Zero-weight classes are never drawn."""
    cdf = weights.double().cumsum(dim=-1)  # float64: a class holding 1e-12 of the mass still moves the CDF
    total = cdf[..., -1:].contiguous()  # (..., 1); searchsorted wants contiguous values
    u = torch.rand(total.shape, generator=generator, dtype=torch.float64, device=weights.device)
    index = torch.searchsorted(cdf, u * total, right=True)
    # u·total can round up to total; the first index whose CDF reaches total is the last class with mass
    return torch.minimum(index, torch.searchsorted(cdf, total)).squeeze(-1)


def truncate(log_x0: torch.Tensor, top_r: float) -> torch.Tensor:
    """VQ-Diffusion's 'top r' truncation: keep the most probable classes until their cumulative
    probability reaches r (always at least one), drop the rest, renormalise. (..., K) -> (..., K)."""
    if not 0.0 < top_r <= 1.0:
        raise ValueError(f"top_r must lie in (0, 1], got {top_r}")
    sorted_lp, order = log_x0.sort(dim=-1, descending=True)
    mass_before = F.pad(sorted_lp.exp().cumsum(dim=-1)[..., :-1], (1, 0))  # mass of the better classes
    keep_sorted = mass_before < top_r
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return torch.log_softmax(log_x0.masked_fill(~keep, LOG_ZERO), dim=-1)


class MaskReplaceDiffusion(nn.Module):
    """VQ-Diffusion's mask-and-replace process with a [PAD] state, its x0-parameterised reverse
    process, training loss (Eq. 9) and samplers (full, fast, truncated, classifier-free guided)."""

    def __init__(
        self,
        num_classes: int,
        num_timesteps: int = 100,  # T, §4 "Model Setting"
        alpha_start: float = 0.99999,  # ᾱ_1, VQ-Diffusion default
        alpha_end: float = 0.000009,  # ᾱ_T
        gamma_start: float = 0.000009,  # γ̄_1
        gamma_end: float = 0.99999,  # γ̄_T
        aux_weight: float = 1.0,  # λ, Eq. 9 (Supp. Table 2)
        importance_sampling: bool = True,
    ):
        super().__init__()
        if num_classes < 2 or num_timesteps < 1:
            raise ValueError(f"need num_classes >= 2 and num_timesteps >= 1, got {num_classes}, {num_timesteps}")
        self.num_classes = num_classes
        self.mask_id = num_classes
        self.pad_id = num_classes + 1
        self.num_states = num_classes + 2
        self.num_timesteps = num_timesteps
        self.aux_weight = aux_weight
        self.importance_sampling = importance_sampling

        # cumulative schedules, index t = 0..T; t = 0 is "no noise" (ᾱ_0 = 1, γ̄_0 = 0). Linear in t
        # as in VQ-Diffusion's alpha_schedule; float64 because 1 − γ̄ and ᾱ ratios span 5 decades.
        steps = torch.linspace(0.0, 1.0, num_timesteps, dtype=torch.float64)
        alpha_bar = torch.cat((torch.ones(1, dtype=torch.float64), alpha_start + steps * (alpha_end - alpha_start)))
        gamma_bar = torch.cat((torch.zeros(1, dtype=torch.float64), gamma_start + steps * (gamma_end - gamma_start)))
        beta_bar_k = 1.0 - alpha_bar - gamma_bar  # K·β̄_t
        if (alpha_bar[1:] <= 0).any() or (gamma_bar[1:] >= 1).any() or (beta_bar_k[1:] <= 0).any():
            raise ValueError("schedule needs 0 < ᾱ_t, γ̄_t < 1 and ᾱ_t + γ̄_t < 1 for t >= 1")
        # every one-step matrix must be a valid mask-and-replace matrix: α_t <= 1, γ_t >= 0, β_t >= 0
        ratio = (1.0 - gamma_bar) / alpha_bar  # K·β_t >= 0  <=>  this is non-decreasing
        if (alpha_bar.diff() > 0).any() or (gamma_bar.diff() < 0).any() or (ratio.diff() < 0).any():
            raise ValueError("schedule must have ᾱ non-increasing, γ̄ non-decreasing and (1 − γ̄)/ᾱ non-decreasing")
        self.register_buffer("alpha_bar", alpha_bar, persistent=False)
        self.register_buffer("gamma_bar", gamma_bar, persistent=False)
        # importance sampling of t (VQ-Diffusion sample_time): EMA of L_t² and visit counts
        self.register_buffer("loss_history", torch.zeros(num_timesteps + 1, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(num_timesteps + 1, dtype=torch.long))

    # ---------------------------------------------------------------- transitions (log space)

    def _transition(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log (α, β, γ) of the s → t mask-and-replace matrix, each (B, 1, 1); s <= t, both (B,)."""
        alpha = self.alpha_bar[t] / self.alpha_bar[s]
        keep = (1.0 - self.gamma_bar[t]) / (1.0 - self.gamma_bar[s])  # 1 − γ
        beta = ((keep - alpha) / self.num_classes).clamp(min=0.0)  # clamp: float64 rounding when s = t
        logs = torch.stack((alpha, beta, 1.0 - keep)).clamp(min=1e-30).log().float()  # 1e-30: see LOG_ZERO
        logs = logs[:, :, None, None]  # (3, B, 1, 1)
        return logs[0], logs[1], logs[2]

    def _apply_transition(self, log_v: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log(Q_{s→t} v) for non-negative vectors v over the K + 2 states: (B, N, K+2) -> same."""
        log_alpha, log_beta, log_gamma = self._transition(s, t)
        codes, mask, pad = log_v[..., : self.num_classes], log_v[..., -2:-1], log_v[..., -1:]
        code_mass = codes.logsumexp(dim=-1, keepdim=True)
        return torch.cat(
            (
                torch.logaddexp(codes + log_alpha, log_beta + code_mass),
                torch.logaddexp(log_gamma + code_mass, mask),
                pad,
            ),
            dim=-1,
        )

    def _likelihood(self, x_t: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log q(x_t | x_s = j) for every source code j: (B, N) -> (B, N, K). [PAD] rows are LOG_ZERO."""
        log_alpha, log_beta, log_gamma = self._transition(s, t)
        onehot = log_onehot(x_t, self.num_states)[..., : self.num_classes]
        from_code = torch.logaddexp(onehot + log_alpha, log_beta.expand_as(onehot))  # x_t a code: α·[j = x_t] + β
        from_mask = log_gamma.expand_as(onehot)  # x_t = [MASK]: any code masks with γ
        out = torch.where((x_t == self.mask_id).unsqueeze(-1), from_mask, from_code)
        return out.masked_fill((x_t == self.pad_id).unsqueeze(-1), LOG_ZERO)

    def _as_states(self, log_codes: torch.Tensor) -> torch.Tensor:
        """(B, N, K) log-probs over codes -> (B, N, K+2) with [MASK], [PAD] impossible."""
        return F.pad(log_codes, (0, 2), value=LOG_ZERO)

    def q_probs(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log q(x_t | x0) of Eq. 5 in closed form: x0 (B, N) long, t (B,) -> (B, N, K+2)."""
        return self._apply_transition(log_onehot(x0, self.num_states), torch.zeros_like(t), t)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x0) (Eq. 5): x0 (B, N) long with [PAD] outside the sequence -> (B, N)."""
        x_t = gumbel_argmax(self.q_probs(x0, t), generator)
        return torch.where(x0 == self.pad_id, x0, x_t)  # [PAD] keeps its state (exactly, not just w.p. 1 − e^-69)

    def q_posterior(
        self, log_x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x_s | x_t) = log Σ_x0 q(x_s | x_t, x0) p(x0) for s < t (Eqs. 6 and 8; s = t − 1 by default).

        log_x0 (B, N, K) log-probs over codes (a one-hot gives the true posterior of Eq. 6),
        x_t (B, N) long, t and s (B,) -> (B, N, K+2), normalised; [PAD] positions stay [PAD].
        By Bayes, q(x_s = j | x_t, x0) = q(x_t | x_s = j) q(x_s = j | x0) / q(x_t | x0), so the
        mixture over x0 is  q(x_t | x_s = j) · [Q̄_s w]_j  with  w(x0) = p(x0) / q(x_t | x0).
        """
        s = t - 1 if s is None else s
        if (s < 0).any() or (s >= t).any():
            raise ValueError(f"q_posterior needs 0 <= s < t, got s={s.tolist()}, t={t.tolist()}")
        zero = torch.zeros_like(t)
        log_w = log_x0 - self._likelihood(x_t, zero, t)  # (B, N, K); q(x_t | x0) > 0 for codes, t >= 1
        log_prior = self._apply_transition(self._as_states(log_w), zero, s)  # (B, N, K+2)
        step = self._likelihood(x_t, s, t)  # q(x_t | x_s = j) for codes j
        # x_s = [MASK] reaches x_t only if x_t is [MASK] (prob 1); [PAD] is handled below
        step_mask = torch.where(x_t == self.mask_id, 0.0, LOG_ZERO).unsqueeze(-1)
        log_post = log_prior + torch.cat((step, step_mask, torch.full_like(step_mask, LOG_ZERO)), dim=-1)
        log_post = log_post - log_post.logsumexp(dim=-1, keepdim=True)
        pad = (x_t == self.pad_id).unsqueeze(-1)
        return torch.where(pad, log_onehot(torch.full_like(x_t, self.pad_id), self.num_states), log_post)

    def reverse_step_probs(self, x0_probs: torch.Tensor, x_t: torch.Tensor, t: int, s: int) -> torch.Tensor:
        """p(x_s | x_t) of `q_posterior`, unnormalised and in probability space, for the sampler's
        hot loop: x0_probs (B, N, K) = p_θ(x0 | x_t), x_t (B, N) codes or [MASK], steps s < t
        -> (B, N, K + 1) weights over the codes and [MASK] ([PAD] rows: anything finite).

        With only two kinds of x_t the mixture over x0 has a closed form of a few elementwise
        ops (no logaddexp), so a sampling step costs about a fifth of `q_posterior`; the test
        suite checks the two agree. w(x0) = p(x0) / q(x_t | x0), then Q̄_s w, then q(x_t | x_s).
        """
        a_s, a_t = self.alpha_bar[[s, t]].tolist()
        g_s, g_t = self.gamma_bar[[s, t]].tolist()
        b_s, b_t = (1 - a_s - g_s) / self.num_classes, (1 - a_t - g_t) / self.num_classes
        alpha, keep = a_t / a_s, (1 - g_t) / (1 - g_s)
        beta = max((keep - alpha) / self.num_classes, 0.0)  # max: float64 rounding when the ratio is flat
        code = (x_t < self.num_classes).unsqueeze(-1)  # (B, N, 1); [MASK] (and [PAD]) rows are False
        k = x_t.clamp(max=self.num_classes - 1).unsqueeze(-1)  # (B, N, 1) the observed code
        # q(x_t | x0): every code masks with γ̄_t; a code x_t comes from x0 = k with ᾱ_t + β̄_t, else β̄_t
        w = x0_probs * torch.where(code, 1 / b_t, 1 / g_t)
        w.scatter_(-1, k, torch.where(code, x0_probs.gather(-1, k) / (a_t + b_t), w.gather(-1, k)))
        w_sum = w.sum(dim=-1, keepdim=True)
        prior = a_s * w + b_s * w_sum  # codes of Q̄_s w
        # q(x_t | x_s = j): γ for a masked x_t; β, or α + β at j = k, for a code x_t
        post = prior * torch.where(code, beta, 1 - keep)
        post.scatter_(-1, k, torch.where(code, (alpha + beta) * prior.gather(-1, k), post.gather(-1, k)))
        mask = torch.where(code, 0.0, g_s * w_sum)  # x_s = [MASK] only ever reaches x_t = [MASK]
        return torch.cat((post, mask), dim=-1)

    # ---------------------------------------------------------------- training

    def sample_timesteps(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """t (B,) in [1, T] and its sampling probability p(t) (B,): uniform until every step has
        been seen 10 times, then ∝ sqrt(E[L_t²]) (VQ-Diffusion's importance sampling)."""
        uniform = torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64, device=device)
        probs = uniform
        if self.importance_sampling and (self.loss_count[1:] > 10).all():
            weights = (self.loss_history[1:] + 1e-10).sqrt()  # 1e-10: a step with zero loss stays reachable
            probs = weights / weights.sum()
        t = torch.multinomial(probs, batch, replacement=True) + 1
        return t, probs[t - 1].float()

    def loss(
        self,
        denoiser: Denoiser,
        x0: torch.Tensor,
        token_mask: torch.Tensor,
        cond: dict,
        t: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_ddm = L_vb + λ · (−log p_θ(x0 | x_t)) (Eq. 9), averaged over non-[PAD] tokens.

        x0 (B, N) long codes (anything outside `token_mask` is ignored), token_mask (B, N) bool,
        cond: keyword arguments for the denoiser (e.g. gloss_memory, gloss_mask). A fixed `t`
        (B,) in [1, T] disables importance sampling (for evaluation). L_vb's term for the drawn
        t is KL(q(x_{t−1} | x_t, x0) ‖ p_θ(x_{t−1} | x_t)), or −log p_θ(x0 | x_1) at t = 1,
        divided by p(t) (so L_vb estimates the sum over all t, as in VQ-Diffusion); L_T does
        not depend on θ and is left out.
        """
        self._check_tokens(x0, token_mask)
        x0 = x0.masked_fill(~token_mask, self.pad_id)
        if t is None:
            t, pt = self.sample_timesteps(x0.shape[0], x0.device)
        else:
            pt = torch.full(t.shape, 1.0 / self.num_timesteps, device=x0.device)
        x_t = self.q_sample(x0, t)
        logits = denoiser(x_t, t, token_mask, **cond)  # (B, N, K)
        log_x0_pred = torch.log_softmax(logits.float(), dim=-1)
        x0_codes = x0.masked_fill(~token_mask, 0)  # any valid id at [PAD]; those tokens are masked out below
        log_true = self.q_posterior(log_onehot(x0_codes, self.num_classes), x_t, t)
        log_model = self.q_posterior(log_x0_pred, x_t, t)
        kl = (log_true.exp() * (log_true - log_model)).sum(dim=-1)  # (B, N)
        nll_x0 = -log_x0_pred.gather(-1, x0_codes.unsqueeze(-1)).squeeze(-1)  # (B, N), −log p_θ(x0 | x_t)
        decoder_nll = -log_model[..., : self.num_classes].gather(-1, x0_codes.unsqueeze(-1)).squeeze(-1)
        vb = torch.where((t == 1).unsqueeze(-1), decoder_nll, kl) * token_mask  # (B, N)
        aux = nll_x0 * token_mask
        counts = token_mask.sum(dim=1).clamp(min=1)  # clamp: an empty sequence contributes nothing
        if self.training and self.importance_sampling:
            self._update_history(t, (vb.sum(dim=1) / counts).detach())
        total = token_mask.sum().clamp(min=1)
        loss_vb = (vb.sum(dim=1) / pt).sum() / total  # L_t / p(t): unbiased for the sum over t
        loss_aux = aux.sum() / total
        loss = loss_vb + self.aux_weight * loss_aux
        accuracy = ((log_x0_pred.argmax(-1) == x0_codes) & token_mask).sum() / total
        return loss, {"loss_vb": loss_vb.detach(), "loss_aux": loss_aux.detach(), "x0_acc": accuracy.detach()}

    def _update_history(self, t: torch.Tensor, per_sample_loss: torch.Tensor) -> None:
        # EMA (0.9) of L_t² per step, as VQ-Diffusion; duplicate t in a batch: one of them wins.
        # A non-finite loss (a step NonFiniteGuard skips) would stay in the EMA for good and
        # turn p(t) into NaN, so it is left out of both the EMA and the counts.
        finite = per_sample_loss.isfinite()
        t, per_sample_loss = t[finite], per_sample_loss[finite]
        prev = self.loss_history[t]
        self.loss_history.scatter_(0, t, 0.1 * per_sample_loss.double() ** 2 + 0.9 * prev)
        self.loss_count.scatter_add_(0, t, torch.ones_like(t))

    def _check_tokens(self, x: torch.Tensor, token_mask: torch.Tensor) -> None:
        if x.shape != token_mask.shape or x.dim() != 2:
            raise ValueError(
                f"tokens and token_mask must both be (B, N); got {tuple(x.shape)}, {tuple(token_mask.shape)}"
            )
        valid = x[token_mask]
        if valid.numel() and (valid.min() < 0 or valid.max() >= self.num_classes):
            raise ValueError(
                f"codes inside token_mask must lie in [0, {self.num_classes}), got [{valid.min()}, {valid.max()}]"
            )

    # ---------------------------------------------------------------- sampling

    def predict_x0(
        self,
        denoiser: Denoiser,
        x_t: torch.Tensor,
        t: torch.Tensor,
        token_mask: torch.Tensor,
        cond: dict,
        uncond: dict | None = None,
        guidance_scale: float | None = None,
        top_r: float | None = None,
    ) -> torch.Tensor:
        """log p_θ(x0 | x_t) (B, N, K), with classifier-free guidance (VQ-Diffusion: mix the x0
        log-probs, uncond + s·(cond − uncond), renormalise) and top-r truncation."""
        log_x0 = torch.log_softmax(denoiser(x_t, t, token_mask, **cond).float(), dim=-1)
        if guidance_scale is not None:
            if uncond is None:
                raise ValueError("guidance_scale needs the unconditional inputs `uncond`")
            log_u = torch.log_softmax(denoiser(x_t, t, token_mask, **uncond).float(), dim=-1)
            log_x0 = torch.log_softmax(log_u + guidance_scale * (log_x0 - log_u), dim=-1)
        return log_x0 if top_r is None else truncate(log_x0, top_r)

    def timesteps(self, steps: int | None) -> list[int]:
        """Denoising schedule T = t_1 > … > t_n >= 1 with n = `steps` evenly spaced (all T by default)."""
        if steps is None:
            return list(range(self.num_timesteps, 0, -1))
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must lie in [1, {self.num_timesteps}], got {steps}")
        grid = torch.linspace(self.num_timesteps, 1, steps).round().long()
        return grid.unique_consecutive().tolist()

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        cond: dict,
        token_mask: torch.Tensor,
        steps: int | None = None,
        top_r: float | None = None,
        guidance_scale: float | None = None,
        uncond: dict | None = None,
        generator: torch.Generator | None = None,
    ) -> Generated:
        """Reverse diffusion from all-[MASK] x_T inside `token_mask` (B, N) ([PAD] outside).

        `steps` < T skips steps with the exact posterior q(x_s | x_t, x0) between visited steps
        (VQ-Diffusion's fast sampling). The last step draws x0 from p_θ(x0 | x_t) over the codes,
        so no [MASK] or [PAD] is left inside the mask. Put the denoiser in eval mode first.
        """
        x = torch.full(token_mask.shape, self.mask_id, dtype=torch.long, device=token_mask.device)
        x = x.masked_fill(~token_mask, self.pad_id)
        schedule = self.timesteps(steps)
        for i, t_now in enumerate(schedule):
            t = torch.full((x.shape[0],), t_now, dtype=torch.long, device=x.device)
            log_x0 = self.predict_x0(denoiser, x, t, token_mask, cond, uncond, guidance_scale, top_r)
            x0_probs = log_x0.exp()
            if i + 1 == len(schedule):
                x = torch.where(token_mask, sample_categorical(x0_probs, generator), x)
                break
            step = self.reverse_step_probs(x0_probs, x, t_now, schedule[i + 1])
            x = torch.where(token_mask, sample_categorical(step, generator), x)
        token_log_probs = log_x0.gather(-1, x.masked_fill(~token_mask, 0).unsqueeze(-1)).squeeze(-1) * token_mask
        score = token_log_probs.sum(dim=1) / token_mask.sum(dim=1).clamp(min=1)  # clamp: empty rows score 0
        return Generated(x, token_log_probs, score)
