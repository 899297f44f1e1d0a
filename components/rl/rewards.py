"""What a response is rewarded with: a weighted sum of terms, each the reward model or a Python function
`fn(prompts, responses) -> list[float]`, checked (one finite number per response) and combined. Shared by every
RL stage; what PPO then does with a score (normalising, clipping, the KL penalty per token) is PPO's own."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from components.config.functions import load_function
from components.errors import ConfigError, RLHFError

log = logging.getLogger(__name__)


class RewardError(RLHFError):
    """A reward function or model returned something a policy cannot be trained on."""


RewardFn = Callable[[list[str], list[str]], list[float]]


@dataclass(frozen=True)
class RewardTerm:
    """One term of the training reward: `fn(prompts, responses)`, or the reward model where `fn` is None."""

    name: str
    weight: float = 1.0
    fn: RewardFn | None = None


def reward_terms(configs: Sequence, reward_fn: RewardFn | Sequence[RewardFn] | None,
                 weights: Sequence[float] | None, has_model: bool, section: str = "ppo") -> list[RewardTerm]:
    """The terms of the reward. With `reward_fn` (a function or a list, the trlx-style API) those functions with
    `weights` (default 1 each), plus the reward model when one is given (weight from `configs` if they list it,
    else 1); without, the `configs` (`<section>.rewards`), whose functions are imported. A term needing a reward
    model that is not given, or no term at all, is a ConfigError naming `section`."""
    model_weight = next((c.weight for c in configs if c.function is None), 1.0)
    if reward_fn is not None:
        fns = [reward_fn] if callable(reward_fn) else list(reward_fn)
        weights = [1.0] * len(fns) if weights is None else list(weights)
        if len(weights) != len(fns):
            raise ConfigError(f"reward_weights: {len(weights)} weights for {len(fns)} reward functions")
        terms = [RewardTerm(getattr(fn, "__name__", f"reward_{i}"), w, fn) for i, (fn, w) in enumerate(zip(fns, weights))]
        terms += [RewardTerm("reward_model", model_weight)] if has_model else []
    else:
        terms = [RewardTerm(c.label, c.weight, load_function(c.function, f"{section}.rewards[{i}].function"))
                 for i, c in enumerate(configs)]
        if not has_model and any(t.fn is None for t in terms):
            raise ConfigError(f"{section}.rewards: a term is the reward model, but no reward model was given "
                              f"({section}.reward_model, or the reward stage's)")
    if not terms:
        raise ConfigError(f"{section}: no reward: give a reward_fn, a reward model or {section}.rewards")
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ConfigError(f"{section} reward functions share a name ({names}); name them apart")
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


def score_terms(batch, responses: list[str], scorer, terms: list[RewardTerm], prompts: list[str],
                messages: list | None = None) -> list:
    """Each reward term's raw scores of the sampled responses: the `Scorer` (which reads the token ids of the
    `Rollout` batch) for the reward model's term, `fn(prompts, responses)` for the others; checked by
    `combine_scores`."""
    return [scorer(batch.input_ids, batch.attention_mask, prompts, responses, batch.has_eos, messages)
            if t.fn is None else t.fn(prompts, responses) for t in terms]


@dataclass
class Reward:
    """The whole reward of an RL stage: its terms, the reward model when a term is it, and what a non-finite score
    does (`error`: raise; `skip`: the sample takes no part)."""

    terms: list[RewardTerm]
    scorer: object | None = None  # a `components.reward.scoring.Scorer`; None when no term is the reward model
    nonfinite: str = "error"
