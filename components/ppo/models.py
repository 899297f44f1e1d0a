"""Building PPO's models: the actor (a causal LM, optionally with a value head on its trunk, optionally LoRA; the
`Actor` itself is the RL core's), a separate critic and the frozen reference."""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from components.models.config import ModelSpec
from components.models.loading import causal_lm, disable_dropout, fused_gelu, token_value_model
from components.models.lora import LoRAConfig, merged, trainable
from components.rl.generation import Actor


def build_actor(spec: ModelSpec, tokenizer, value_head: bool, lora: LoRAConfig | None, seed: int,
                gradient_checkpointing: bool = False) -> Actor:
    """The policy LM (random init from `spec.arch` is seeded) with a value head when asked, LoRA when configured."""
    torch.manual_seed(seed)
    lm = fused_gelu(disable_dropout(causal_lm(spec, tokenizer, field="ppo.model")))
    return Actor(trainable(lm, lora, "CAUSAL_LM", gradient_checkpointing), value_head)


def build_reference(actor: Actor, lora: LoRAConfig | None) -> nn.Module | None:
    """The frozen reference: a copy of the initial policy (taken before any update, so a randomly initialised
    policy gets an identical reference), or None with LoRA (the actor's base with adapters disabled plays the
    reference, so no second copy is held)."""
    if lora is not None:
        return None
    return copy.deepcopy(actor.lm).requires_grad_(False).eval()


def build_critic(spec: ModelSpec, tokenizer, seed: int) -> nn.Module:
    torch.manual_seed(seed + 1)
    return fused_gelu(disable_dropout(token_value_model(spec, tokenizer, field="ppo.critic_model")))


@contextlib.contextmanager
def adapters_disabled(actor: Actor):
    """With LoRA, the actor's LM without its adapters (= the reference); a no-op otherwise."""
    with actor.lm.disable_adapter() if hasattr(actor.lm, "disable_adapter") else contextlib.nullcontext():
        yield actor.lm


def merged_policy(actor: Actor) -> nn.Module:
    """The policy as a plain transformers model (LoRA adapters merged into a copy), for save_pretrained."""
    return merged(actor.lm)
