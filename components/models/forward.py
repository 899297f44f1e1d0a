"""Forward-pass helpers every model wrapper shares (actor, critic, reference, reward model)."""
from __future__ import annotations

import torch
from torch import nn


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as HF `generate` computes them. (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def inner_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (adapters stay injected in its layers)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
