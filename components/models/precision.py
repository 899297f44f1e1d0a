"""Mixed precision: bf16 matmuls where they are safe, fp32 where RL's arithmetic needs it.

`compute.precision: bf16` runs a trained model's forward and backward under torch autocast (DeepSpeed's
`torch_autocast`; fp32 master weights and optimizer states) and holds frozen models' linear weights (the PPO
reference, reward models) in bf16 (`freeze`; run them under `autocast`). `bf16-true` holds every model wholly in
bf16 (trained ones with components/compute/optim.py's stochastically rounded AdamW) and needs no autocast. Output
layers are computed in fp32 either way (`fp32_head`): a bf16 logit between 16 and 32 is rounded to a multiple of
1/8, noise of that size in every log-prob, every PPO ratio and the KL to the reference.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F


class Float32Head(nn.Linear):
    """An nn.Linear computed in fp32 whatever its weights' dtype and whatever autocast says (same parameters,
    same state dict, same tying: only the forward differs)."""

    fp32_weight: torch.Tensor | None = None  # set by `fp32_head_copies` while the weight does not change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.float()
            weight = self.weight.float() if self.fp32_weight is None else self.fp32_weight
            return F.linear(x.float(), weight, bias)


@contextlib.contextmanager
def fp32_head_copies(model: nn.Module):
    """Inside the block, `model`'s bf16 output heads use one fp32 copy of their weight instead of casting it at
    every forward: for generation, where a bf16-true LM head (49k x 576 on SmolLM2) was cast at every new token.
    The weights must not change inside the block; the copies are dropped on exit."""
    heads = [m for m in model.modules() if isinstance(m, Float32Head) and m.weight.dtype != torch.float32]
    for head in heads:
        head.fp32_weight = head.weight.detach().float()
    try:
        yield model
    finally:
        for head in heads:
            head.fp32_weight = None


def fp32_head(layer: nn.Module | None) -> None:
    """Compute a plain nn.Linear output layer (an LM head, a value or score head) in fp32, in place. Other
    layers (None, a LoRA-wrapped head) are left as they are."""
    if type(layer) is nn.Linear:
        layer.__class__ = Float32Head


def freeze(model: nn.Module, precision: str) -> nn.Module:
    """A no-grad model; under bf16 its linear layers are held in bf16 (`hold_frozen_linears_in_bf16`): run under
    `autocast`, a frozen copy of the policy then computes what the policy computes (the KL at step 0 is 0, not bf16
    noise) in ~60% of the memory of an fp32 copy. Under bf16-true the whole model is bf16, as the policy is."""
    model.requires_grad_(False)
    if precision == "bf16":
        hold_frozen_linears_in_bf16(model)
    elif precision == "bf16-true":
        parameters_to_bf16(model)
    return model


def parameters_to_bf16(model: nn.Module) -> nn.Module:
    """Cast every floating-point parameter to bf16 in place (the same Parameter objects, new tensors, so a mmapped
    checkpoint is not kept resident). Buffers keep their dtype, as under `from_pretrained(dtype=torch.bfloat16)`:
    a bf16 rotary `inv_freq` would put angles at position 100 ~0.2 rad off."""
    for param in model.parameters():
        if param.is_floating_point():
            param.data = param.data.to(torch.bfloat16)
    return model


def hold_frozen_linears_in_bf16(model: nn.Module) -> None:
    """Hold the weights of `model`'s frozen linear layers (nn.Linear, GPT-2's Conv1D; not fp32 heads) in bf16:
    exactly what autocast casts fp32 weights to at each use, so forwards under autocast do not change; embeddings,
    norms and trainable layers keep fp32. Frozen models, and a LoRA model's base (the adapters stay fp32 and
    trainable)."""
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    frozen = [m for m in model.modules() if type(m) in (nn.Linear, Conv1D)
              and not any(p.requires_grad for p in m.parameters())]
    for module in frozen:
        module.to(torch.bfloat16)
    if frozen:
        # from_pretrained maps the checkpoint file and its tensors are views of that map: the fp32 tensors left
        # would keep the whole file mapped, and the pages the cast read resident (~540 MB on SmolLM2). Own copies.
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype == torch.float32:
                tensor.data = tensor.data.clone()


def autocast(precision: str, device: torch.device | str = "cpu"):
    """The autocast context of `precision` for forwards outside a DeepSpeed engine's own (HF generate); none for
    fp32 and for bf16-true, whose weights are bf16 already."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
