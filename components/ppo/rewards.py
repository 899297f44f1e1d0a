"""From reward terms to per-token rewards: the weighted terms (reward model and/or Python functions), checks, EOS
penalty, running normalisation, clipping, the KL penalty per token, and the score placed on the last real response
token."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from components.config.functions import load_function
from components.errors import ConfigError, RLHFError
from components.ppo.losses import KL_ESTIMATORS

log = logging.getLogger(__name__)


class RewardError(RLHFError):
    """A reward function or model returned something PPO cannot train on."""


RewardFn = Callable[[list[str], list[str]], list[float]]


@dataclass(frozen=True)
class RewardTerm:
    """One term of the training reward: `fn(prompts, responses)`, or the reward model where `fn` is None."""

    name: str
    weight: float = 1.0
    fn: RewardFn | None = None


def reward_terms(configs: Sequence, reward_fn: RewardFn | Sequence[RewardFn] | None,
                 weights: Sequence[float] | None, has_model: bool) -> list[RewardTerm]:
    """The terms of the reward. With `reward_fn` (a function or a list, the trlx-style API) those functions with
    `weights` (default 1 each), plus the reward model when one is given (weight from `configs` if they list it,
    else 1); without, the `configs` (`ppo.rewards`), whose functions are imported. A term needing a reward model
    that is not given, or no term at all, is a ConfigError."""
    model_weight = next((c.weight for c in configs if c.function is None), 1.0)
    if reward_fn is not None:
        fns = [reward_fn] if callable(reward_fn) else list(reward_fn)
        weights = [1.0] * len(fns) if weights is None else list(weights)
        if len(weights) != len(fns):
            raise ConfigError(f"reward_weights: {len(weights)} weights for {len(fns)} reward functions")
        terms = [RewardTerm(getattr(fn, "__name__", f"reward_{i}"), w, fn) for i, (fn, w) in enumerate(zip(fns, weights))]
        terms += [RewardTerm("reward_model", model_weight)] if has_model else []
    else:
        terms = [RewardTerm(c.label, c.weight, load_function(c.function, f"ppo.rewards[{i}].function"))
                 for i, c in enumerate(configs)]
        if not has_model and any(t.fn is None for t in terms):
            raise ConfigError("ppo.rewards: a term is the reward model, but no reward model was given "
                              "(ppo.reward_model, or the reward stage's)")
    if not terms:
        raise ConfigError("ppo: no reward: give a reward_fn, a reward model or ppo.rewards")
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ConfigError(f"ppo reward functions share a name ({names}); name them apart")
    return terms


def check_scores(scores: list[float] | torch.Tensor, n: int, nonfinite: str,
                 name: str = "reward function") -> tuple[torch.Tensor, torch.Tensor]:
    """Validate `n` scores of the term `name`. Returns (scores (n,), keep (n,) bool). `nonfinite` is "error"
    (raise) or "skip" (keep=False for NaN/inf scores, which then take no part in the update)."""
    if len(scores) != n:
        raise RewardError(f"{name} returned {len(scores)} scores for {n} responses")
    try:
        scores = torch.as_tensor(scores, dtype=torch.float32).reshape(n)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise RewardError(f"{name} returned values that are not numbers: {exc}") from exc
    keep = torch.isfinite(scores)
    if not keep.all():
        bad = [i for i in range(n) if not keep[i]]
        if nonfinite == "error":
            raise RewardError(f"{name}: reward is NaN or inf for {len(bad)} of {n} responses (first at index "
                              f"{bad[0]}); set ppo.nonfinite_rewards=skip to drop them instead")
        scores = torch.where(keep, scores, torch.zeros_like(scores))
    return scores, keep


def combine_scores(raw: Sequence, terms: Sequence[RewardTerm], n: int,
                   nonfinite: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each term's raw scores checked, then weighted and summed. Returns (scores (n,), per-term scores (n, K),
    keep (n,) bool: finite in every term)."""
    checked = [check_scores(s, n, nonfinite, t.name) for s, t in zip(raw, terms)]
    per_term = torch.stack([s for s, _ in checked], 1)  # (n, K)
    keep = torch.stack([k for _, k in checked], 1).all(1)
    weights = torch.tensor([t.weight for t in terms], dtype=per_term.dtype)
    return (per_term @ weights) * keep, per_term * keep.unsqueeze(1), keep


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
