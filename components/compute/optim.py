"""AdamW for bf16 weights (`compute.precision: bf16-true`): bf16 moments, fp32 arithmetic, and the new weight
stochastically rounded to bf16, so an update below half a bf16 step is applied with the right probability
instead of rounding to nothing (a weight of 0.05 has a bf16 step of 2.4e-4: an lr of 1e-5 would never move it).

Written here because neither library we use offers it fast on a CPU: DeepSpeed's CPU Adam rounds bf16 to nearest,
and torchao's `_AdamW(bf16_stochastic_round=True)` draws its rounding bits from torch's RNG, 0.76 s per step for
135M weights on 2 cores. Here one compiled elementwise kernel (torch.compile, dynamic shapes: compiled once per
process) takes its rounding bits from an integer hash of (element index, step, tensor number): 0.17-0.26 s per
step on SmolLM2, clipping included (DeepSpeed's fp32 CPU Adam: 0.14-0.17 s), with no RNG state (a resumed run
rounds exactly as an uninterrupted one)."""
from __future__ import annotations

import functools

import torch

_GOLDEN, _M1, _M2 = -1640531527, 2146121005, -2073254261  # 0x9E3779B9, 0x7FEB352D, 0x846CA68B as int32


def rounding_bits(n: int, seed: torch.Tensor) -> torch.Tensor:
    """n pseudo-random integers in [0, 65536) (int32): a 32-bit integer hash (lowbias32) of index and seed."""
    x = torch.arange(n, dtype=torch.int32, device=seed.device) * _GOLDEN + seed
    x = x ^ ((x >> 16) & 0xFFFF)  # logical shifts: torch's >> on int32 is arithmetic
    x = x * _M1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _M2
    x = x ^ ((x >> 16) & 0xFFFF)
    return x & 0xFFFF


def round_to_bf16(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """fp32 -> bf16 rounding up (in magnitude) with probability equal to the dropped fraction: E[out] = x."""
    return ((x.view(torch.int32) + bits) & -65536).view(torch.float32).to(torch.bfloat16)


def _adamw(p, grad, exp_avg, exp_avg_sq, coef, seed, stochastic: bool):
    """One AdamW step of a flat tensor, in place. coef = [1 - lr * wd, lr / bias1, 1 / sqrt(bias2), eps,
    1 - beta1, 1 - beta2, gradient clip factor] (a tensor, so a new lr does not recompile)."""
    g = grad.float() * coef[6]
    m = exp_avg.float().lerp(g, coef[4])
    v = exp_avg_sq.float().lerp(g * g, coef[5])
    new = p.float() * coef[0] - coef[1] * m / (v.sqrt() * coef[2] + coef[3])
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    p.copy_(round_to_bf16(new, rounding_bits(p.numel(), seed)) if stochastic else new)


@functools.cache
def _kernel():
    return torch.compile(_adamw, dynamic=True, fullgraph=True)  # compiled at its first call, once per process


class StochasticRoundingAdamW(torch.optim.Optimizer):
    """torch.optim.AdamW's update (decoupled weight decay, bias correction) with moments held in each parameter's
    dtype. bf16 parameters are rounded stochastically; fp32 parameters get exactly AdamW's fp32 update.

    `max_grad_norm` > 0 clips the global gradient norm inside the same kernel (the engine's clipping is then off:
    DeepSpeed's casts every bf16 gradient to fp32 for its norm and again to scale it, 0.3 s per step on SmolLM2)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, max_grad_norm: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        kernel, clip = _kernel(), self._clip_factor()
        for g, group in enumerate(self.param_groups):
            (beta1, beta2), lr = group["betas"], group["lr"]
            coefs: dict[int, torch.Tensor] = {}
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                state["step"] += 1
                t = int(state["step"])
                if t not in coefs:
                    coefs[t] = torch.tensor([1 - lr * group["weight_decay"], lr / (1 - beta1 ** t),
                                             (1 - beta2 ** t) ** -0.5, group["eps"], 1 - beta1, 1 - beta2, clip])
                seed = torch.tensor((t * 1_000_003 + g * 7_919 + i) & 0x7FFFFFFF, dtype=torch.int32)
                kernel(p.view(-1), p.grad.reshape(-1), state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1),
                       coefs[t].to(p.device), seed.to(p.device), p.dtype == torch.bfloat16)
        return loss

    def _clip_factor(self) -> float:
        """min(1, max_grad_norm / global gradient norm), as torch's clip_grad_norm_ scales; 1 when off."""
        if self.max_grad_norm <= 0:
            return 1.0
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm(grads, foreach=True))
        return min(1.0, self.max_grad_norm / (norm + 1e-6))
