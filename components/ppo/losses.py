"""PPO's math as pure tensor functions (no models, no DeepSpeed), so each is tested on hand-built tensors.

Shapes: B sequences, R response positions. `mask` (B, R) is 1 on real response tokens (a prefix of each row).
Token losses are returned summed, so the caller divides by the token count of the whole minibatch: the loss is
then the same whether the minibatch is split over ranks, accumulation steps, or neither.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the masked entries."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    return ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over masked entries; with shift_mean=False the mean is added back (scale only).
    Entries outside the mask are returned as 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016). rewards, values, mask (B, R).

    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1},  returns = A + V.
    Values and rewards past the end of a response count as 0, so trailing padding never changes a result.
    Returns (advantages, returns), both (B, R) and 0 outside the mask."""
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens) under logits. logits (B, R, V), tokens (B, R) -> (B, R)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(tokens) (B, R) and the entropy (B, R) of the softmax of logits (B, R, V), from one log_softmax."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_eps: float, clip_eps_high: float | None = None,
                weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (Schulman et al. 2017): sum over tokens of max(-A r, -A clip(r, 1-eps, 1+eps_high)),
    r = exp(logp - logp_old); eps_high defaults to eps (DAPO raises it). `weights` (default: the mask) weigh each
    token's loss (loss aggregation). Returns (summed loss, stats summed over tokens: clipped count, clipped at the
    low / high end, approx-KL)."""
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    loss = masked_sum(torch.maximum(unclipped, clipped), mask if weights is None else weights)
    with torch.no_grad():
        stats = {"clipfrac": masked_sum((clipped > unclipped).float(), mask),
                 "clip_low": masked_sum(((ratio < 1.0 - clip_eps) & (advantages < 0)).float(), mask),
                 "clip_high": masked_sum(((ratio > 1.0 + high) & (advantages > 0)).float(), mask),
                 # KL(old || new) on tokens sampled from the old policy: k3 of log(p_old / p_new) = exp(x) - 1 - x
                 "approx_kl": masked_sum(kl_k3(-log_ratio), mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5 * max((V - G)^2, (V_clipped - G)^2) summed over tokens, V_clipped = V_old + clip(V - V_old, +-clip)
    (PPO2's value clipping; `clip=None` turns it off). Returns (summed loss, {clipped count})."""
    err = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_sum(err, mask), {"vf_clipfrac": torch.zeros(())}
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    err_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_sum(torch.maximum(err, err_clipped), mask)
    return loss, {"vf_clipfrac": masked_sum((err_clipped > err).float().detach(), mask)}


# KL(pi || ref) estimators from log r = logp - logp_ref on tokens sampled from pi (Schulman, "Approximating KL
# divergence", 2020): k1 unbiased but noisy and can be negative; k2 = (log r)^2 / 2; k3 = (r^-1 - 1) + log r >= 0.
def kl_k1(log_ratio: torch.Tensor) -> torch.Tensor:
    return log_ratio


def kl_k2(log_ratio: torch.Tensor) -> torch.Tensor:
    return 0.5 * log_ratio ** 2


def kl_k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 of KL(p || q) for samples from p, log_ratio = log p - log q: (q/p - 1) - log(q/p)."""
    return torch.expm1(-log_ratio) + log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
