"""Rewards of a population -> the weights of its perturbations in the ES update."""
from __future__ import annotations

import torch


def zscore(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(r - mean) / std (population std); all-equal rewards give zeros."""
    std = rewards.std(unbiased=False)
    return (rewards - rewards.mean()) / std if std > eps else torch.zeros_like(rewards)


def centered_rank(rewards: torch.Tensor) -> torch.Tensor:
    """Ranks mapped to [-0.5, 0.5] (Salimans et al. 2017): invariant to any monotone change of the reward, robust
    to outliers. Ties get the mean of their ranks."""
    n = len(rewards)
    if n < 2:
        return torch.zeros_like(rewards)
    sorted_values, order = torch.sort(rewards)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = torch.arange(n, dtype=torch.float64)
    for value in sorted_values.unique():  # ties: the mean rank
        tied = rewards == value
        ranks[tied] = ranks[tied].mean()
    return (ranks / (n - 1) - 0.5).to(rewards.dtype)


SHAPING = {"zscore": zscore, "centered_rank": centered_rank}
