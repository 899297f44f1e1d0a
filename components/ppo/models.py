"""The PPO models: the actor (a causal LM, optionally with a value head on its trunk, optionally LoRA),
a separate critic, the frozen reference, and the scorer. Each forward returns only the response positions."""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from components.models.config import ModelSpec
from components.models.forward import inner_model, position_ids
from components.models.loading import causal_lm, disable_dropout, fused_gelu, token_value_model
from components.models.lora import LoRAConfig, merged, trainable
from components.models.precision import fp32_head


class Actor(nn.Module):
    """A causal LM and, in the value-head layout, a linear value head on its final hidden states (one trunk
    forward gives both). `lm` is what `generate` runs and what is saved as the policy."""

    def __init__(self, lm: nn.Module, value_head: bool):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size if hasattr(lm.config, "hidden_size") else lm.config.n_embd
        self.v_head = nn.Linear(hidden, 1) if value_head else None
        fp32_head(self.v_head)
        if self.v_head is not None:
            nn.init.normal_(self.v_head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int,
                temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, R, V) predicting the last R tokens and values (B, R) of the states they are sampled in
        (None without a value head). input_ids and attention_mask are (B, P + R)."""
        inner = inner_model(self.lm)
        hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids(attention_mask)).last_hidden_state  # (B, T, H)
        hidden = hidden[:, -n_response - 1:-1]  # (B, R, H): the state before each response token
        logits = inner.get_output_embeddings()(hidden) / (temperature or 1.0)  # (B, R, V)
        values = self.v_head(hidden).squeeze(-1) if self.v_head is not None else None  # (B, R)
        return logits, values

    def values_of_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Values of final hidden states (..., H) -> (...)."""
        return self.v_head(hidden).squeeze(-1)


def response_values(critic: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    n_response: int) -> torch.Tensor:
    """A separate critic's values (B, R) of the states before each of the last R tokens."""
    out = critic(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
    return out.logits[:, -n_response - 1:-1, 0].float()


def response_logprobs(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int,
                      temperature: float = 1.0) -> torch.Tensor:
    """log p(token) (B, R) of the last R tokens under a causal LM (the reference)."""
    logits = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                logits_to_keep=n_response + 1).logits[:, :-1]  # (B, R, V)
    logp = torch.log_softmax(logits.float() / (temperature or 1.0), dim=-1)
    return torch.gather(logp, 2, input_ids[:, -n_response:].unsqueeze(-1)).squeeze(-1)


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
