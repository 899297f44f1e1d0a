"""Bradley-Terry pairwise loss for reward models (Ouyang et al. 2022, eq. 1; Llama 2's margin variant)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float | torch.Tensor = 0.0) -> torch.Tensor:
    """mean(-logsigmoid(r_chosen - r_rejected - margin)). r_chosen, r_rejected: (B,); margin scalar or (B,)."""
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs the model orders correctly (ties count as wrong). Inputs (B,)."""
    return (r_chosen > r_rejected).float().mean()
