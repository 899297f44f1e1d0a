"""DPO-family losses as pure functions of log-ratios, under TRL's `loss_type` names.

Every loss takes the policy-minus-reference log-probability of the chosen and the rejected response, (B,) each,
and returns per-pair losses (B,). With h = chosen_logratios - rejected_logratios (the implicit reward margin / beta):
- sigmoid (Rafailov et al. 2023, eq. 7): -logsigmoid(beta h), with label smoothing eps (cDPO):
  -(1 - eps) logsigmoid(beta h) - eps logsigmoid(-beta h)
- robust (Chowdhury et al. 2024, unbiased under label noise eps): ((1 - eps)(-logsigmoid(beta h))
  - eps(-logsigmoid(-beta h))) / (1 - 2 eps)
- hinge (SLiC, Zhao et al. 2023): relu(1 - beta h)
- ipo (Azar et al. 2023, eq. 17): (h - 1 / (2 beta))^2, on length-averaged log-probabilities (as TRL does)
The RPO term (Pang et al. 2024; TRL's `rpo_alpha`) adds alpha * NLL of the chosen response to any of them.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]


def sigmoid(chosen: torch.Tensor, rejected: torch.Tensor, beta: float, eps: float = 0.0) -> torch.Tensor:
    h = chosen - rejected
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def robust(chosen: torch.Tensor, rejected: torch.Tensor, beta: float, eps: float = 0.0) -> torch.Tensor:
    h = chosen - rejected
    return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)


def hinge(chosen: torch.Tensor, rejected: torch.Tensor, beta: float, eps: float = 0.0) -> torch.Tensor:
    return torch.relu(1 - beta * (chosen - rejected))


def ipo(chosen: torch.Tensor, rejected: torch.Tensor, beta: float, eps: float = 0.0) -> torch.Tensor:
    return (chosen - rejected - 1 / (2 * beta)) ** 2


LOSSES: dict[str, Loss] = {"sigmoid": sigmoid, "robust": robust, "hinge": hinge, "ipo": ipo}
LENGTH_AVERAGED = {"ipo"}  # losses defined on mean per-token log-probabilities


def implicit_rewards(chosen: torch.Tensor, rejected: torch.Tensor, beta: float) -> dict[str, float]:
    """TRL's DPO statistics of a batch: the implicit rewards beta * log-ratio of each response, how often the
    chosen one's is higher, and the mean margin."""
    r_c, r_r = beta * chosen.detach(), beta * rejected.detach()
    return {"rewards/chosen": r_c.mean().item(), "rewards/rejected": r_r.mean().item(),
            "rewards/accuracies": (r_c > r_r).float().mean().item(), "rewards/margins": (r_c - r_r).mean().item()}
