"""PPO's reward shaping, from sequence scores to per-token rewards: the EOS penalty, running normalisation,
clipping, the KL penalty per token, and the score placed on the last real response token."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from components.ppo.losses import KL_ESTIMATORS


@dataclass
class RunningMoments:
    """Running mean and std of scores (Chan et al. parallel update), for reward normalisation."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 1e-4

    def update(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        batch_mean, batch_var, n = x.mean().item(), x.var(unbiased=False).item(), x.numel()
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta ** 2 * self.count * n / total) / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-8))

    def state_dict(self) -> dict:
        return asdict(self)


def shape_scores(scores: torch.Tensor, keep: torch.Tensor, has_eos: torch.Tensor, missing_eos_penalty: float | None,
                 moments: RunningMoments | None, clip: float | None) -> torch.Tensor:
    """Scores (B,) -> scores used for training: minus the EOS penalty where a response never ended, then
    normalised by the running moments (updated with this batch), then clipped to [-clip, clip]."""
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (~has_eos).float()
    if moments is not None:
        moments.update(scores[keep])
        scores = (scores - moments.mean) / moments.std
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return scores * keep


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float, estimator: str, kl_in_reward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards (B, R): -kl_coef * KL_t on every response token (when the KL goes in the reward) and
    the sequence score on the last real token. Returns (rewards, kl (B, R) per token, masked)."""
    kl = KL_ESTIMATORS[estimator](logprobs - ref_logprobs) * mask  # (B, R)
    rewards = -kl_coef * kl if kl_in_reward else torch.zeros_like(kl)
    last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of the last real response token
    rewards = rewards.scatter_add(1, last.unsqueeze(1), scores.unsqueeze(1).to(rewards.dtype))
    return rewards * mask, kl
