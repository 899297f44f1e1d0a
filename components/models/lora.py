"""LoRA (peft) with one config shape for every training stage: SFT, the reward model and PPO."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from pydantic import Field

from components.config.base import StrictModel

if TYPE_CHECKING:  # the config loads without torch
    from torch import nn


class LoRAConfig(StrictModel):
    """Train low-rank adapters (Hu et al. 2021) instead of all weights. The stage's output is the merged model
    (a plain save_pretrained dir that every later stage and `from_pretrained` load as usual)."""

    r: int = Field(8, ge=1, description="Adapter rank.")
    alpha: int = Field(16, ge=1, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on adapter inputs.")
    target_modules: list[str] | None = Field(None, description="Module names to adapt; default: peft's per-model choice.")


def apply_lora(model: nn.Module, lora: LoRAConfig | None, task_type: str) -> nn.Module:
    """`model` with adapters injected (peft's `get_peft_model`), or unchanged without a LoRA config.
    task_type: "CAUSAL_LM" or "SEQ_CLS" (which also trains the new score head, as peft does)."""
    if lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type=task_type))


def merged(model: nn.Module) -> nn.Module:
    """A plain transformers model: LoRA adapters merged into a copy (the training model is left as it is)."""
    if hasattr(model, "merge_and_unload"):
        import torch

        model = copy.deepcopy(model)
        for param in model.parameters():  # a base held in bf16 for training (precision.hold_frozen_linears_in_bf16)
            if param.dtype == torch.bfloat16:  # merges and is saved in fp32, as it was loaded
                param.data = param.data.float()
        return model.merge_and_unload()
    return model


def trainable(model: nn.Module, lora: LoRAConfig | None, task_type: str, gradient_checkpointing: bool = False) -> nn.Module:
    """A model ready for a training stage: gradient checkpointing when asked (non-reentrant, so LoRA's frozen
    inputs still pass gradients), then LoRA adapters when configured."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return apply_lora(model, lora, task_type)
