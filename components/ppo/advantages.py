"""Advantage estimators on plain tensors: GAE and the critic-free GRPO, RLOO and REINFORCE++, each a small function
in `ESTIMATORS` (what `ppo.advantage` names), and the loss aggregations that go with them. Rollout, scoring, the
update, DeepSpeed, LoRA and resume stay the trainer's own."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from components.ppo.config import PPOConfig
from components.ppo.losses import compute_gae, masked_whiten


def group_ids(n_rows: int, world_size: int, group_size: int) -> torch.Tensor:
    """The group (prompt slot) of each row of an all-gathered batch. Every rank samples `group_size` consecutive rows
    per prompt slot (rank r holds slots r, r + world, ...), and the gather interleaves ranks row by row (local row j
    of rank r is global row j * world + r), so global row k belongs to slot (k % world) + world * (k // world // G)."""
    k = torch.arange(n_rows)
    return (k % world_size) + world_size * (k // world_size // group_size)


def group_order(groups: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A shuffle of the rows that keeps each group's rows together (groups in random order, rows of a group in
    batch order), so minibatches cut from it hold whole groups. With one row per group it is `torch.randperm`."""
    n_groups = int(groups.max()) + 1
    position = torch.empty(n_groups, dtype=torch.long)
    position[torch.randperm(n_groups, generator=generator)] = torch.arange(n_groups)
    return torch.argsort(position[groups] * len(groups) + torch.arange(len(groups)))


def _group_stats(scores: torch.Tensor, groups: torch.Tensor, keep: torch.Tensor):
    """Per-row (sum, count, sum of squares) of the kept rows of its group."""
    n = int(groups.max()) + 1
    w = keep.float()
    total = torch.zeros(n).index_add_(0, groups, scores * w)
    count = torch.zeros(n).index_add_(0, groups, w)
    squares = torch.zeros(n).index_add_(0, groups, scores ** 2 * w)
    return total[groups], count[groups], squares[groups]


def grpo_advantages(scores: torch.Tensor, groups: torch.Tensor, keep: torch.Tensor, scale: bool = True,
                    eps: float = 1e-4) -> torch.Tensor:
    """GRPO (Shao et al. 2024): (r - group mean) / (group std + eps); `scale=False` leaves out the division
    (Dr. GRPO, Liu et al. 2025). A group whose rewards are all equal gets advantage 0. Rows not kept get 0."""
    total, count, squares = _group_stats(scores, groups, keep)
    mean = total / count.clamp(min=1)
    advantages = scores - mean
    if scale:
        var = (squares - count * mean ** 2) / (count - 1).clamp(min=1)  # unbiased, as torch.std
        advantages = advantages / (var.clamp(min=0).sqrt() + eps)
    return advantages * keep


def rloo_advantages(scores: torch.Tensor, groups: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): r_i minus the mean of the other samples of its prompt, i.e. G/(G-1) (r_i - mean)."""
    total, count, _ = _group_stats(scores, groups, keep)
    others = (total - scores) / (count - 1).clamp(min=1)
    return (scores - others) * keep * (count > 1)


def reinforce_pp_advantages(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): per-token returns (discounted sums of token rewards that carry the KL penalty),
    whitened over the whole batch; no critic, no group."""
    _, returns = compute_gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma, lam=1.0)  # V = 0: returns
    return masked_whiten(returns, mask)


def zero_std_fraction(scores: torch.Tensor, groups: torch.Tensor, keep: torch.Tensor) -> float:
    """Fraction of groups whose kept rewards are all equal (no learning signal for GRPO/RLOO)."""
    zero = [bool((scores[(groups == g) & keep] == scores[(groups == g) & keep][0]).all())
            for g in groups.unique().tolist() if ((groups == g) & keep).any()]
    return sum(zero) / max(len(zero), 1)


def token_weights(mask: torch.Tensor, how: str, max_tokens: int) -> torch.Tensor:
    """Per-token loss weights whose masked sum, divided by the minibatch's token count (what the update divides
    by), gives: `token_mean` the mean over all tokens (DAPO; PPO's default); `sequence_mean` the mean over sequences
    of each sequence's token mean (GRPO); `constant` token sums over sequences x max_tokens (Dr. GRPO)."""
    if how == "token_mean":
        return mask
    n_tokens, n_seqs = mask.sum().clamp(min=1), mask.size(0)
    if how == "sequence_mean":
        return mask * n_tokens / (n_seqs * mask.sum(1, keepdim=True).clamp(min=1))
    return mask * n_tokens / (n_seqs * max_tokens)


@dataclass
class Returns:
    """What an estimator reads, for a whole (all-gathered) batch of B samples with R response positions."""

    rewards: torch.Tensor  # (B, R) per-token rewards: the shaped score on the last token, minus the KL penalty
    values: torch.Tensor  # (B, R) the critic's values (zeros without one)
    mask: torch.Tensor  # (B, R) 1 on response tokens of samples whose score is finite
    scores: torch.Tensor  # (B,) the raw weighted scores
    keep: torch.Tensor  # (B,) bool: the score is finite
    groups: torch.Tensor  # (B,) the group (prompt slot) of each sample


Estimate = tuple[torch.Tensor, torch.Tensor, dict[str, float]]  # advantages (B, R), returns (B, R), statistics


def gae(x: Returns, c: PPOConfig) -> Estimate:
    """PPO's GAE with the critic's values, whitened over the batch unless ppo.whiten_advantages is off."""
    advantages, returns = compute_gae(x.rewards, x.values, x.mask, c.gamma, c.lam)
    return (masked_whiten(advantages, x.mask) if c.whiten_advantages else advantages), returns, {}


def reinforce_pp(x: Returns, c: PPOConfig) -> Estimate:
    return reinforce_pp_advantages(x.rewards, x.mask, c.gamma), torch.zeros_like(x.rewards), {}


def grpo(x: Returns, c: PPOConfig) -> Estimate:
    """One sequence reward per sample (with the KL penalty when it is in the reward), against its group."""
    advantages = grpo_advantages(x.rewards.sum(1), x.groups, x.keep, c.scale_rewards)
    return advantages.unsqueeze(1) * x.mask, torch.zeros_like(x.rewards), _group_signal(x)


def rloo(x: Returns, c: PPOConfig) -> Estimate:
    advantages = rloo_advantages(x.rewards.sum(1), x.groups, x.keep)
    return advantages.unsqueeze(1) * x.mask, torch.zeros_like(x.rewards), _group_signal(x)


def _group_signal(x: Returns) -> dict[str, float]:
    return {"frac_reward_zero_std": zero_std_fraction(x.scores, x.groups, x.keep)}


ESTIMATORS: dict[str, Callable[[Returns, PPOConfig], Estimate]] = {
    "gae": gae, "grpo": grpo, "rloo": rloo, "reinforce_pp": reinforce_pp}
