"""ES perturbations: Gaussian noise regenerated from an integer seed, layer by layer (seed + layer index), added to
the weights in place and taken off again exactly; the update sums the members' noise the same way. No copy of the
model and no noise tensor outlives the layer it belongs to.

Exactness: (p + d) - d is not always p in floating point (about 7% of fp32 weights near 0.02 with d ~ 1e-3 come
back one ulp off). `perturb` therefore checks each layer as it goes and keeps, for the few elements that would not
come back, their index and original value; `restore` subtracts the noise and puts those back. So a restored model
is bit-identical and every rank holds the same weights after evaluating different members.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from components.compute.seeds import seed_for

Fix = tuple[torch.Tensor, torch.Tensor]  # (flat indices, original values) of one layer


@dataclass(frozen=True)
class Member:
    """One perturbation: noise from `seed`, added with `sign` (antithetic pairs share a seed)."""

    seed: int
    sign: int = 1


def population(seed: int, iteration: int, size: int, antithetic: bool) -> list[Member]:
    """The members of one iteration: `size` seeds, or size/2 seeds each with +1 and -1 (antithetic)."""
    if antithetic:
        return [Member(seed_for(seed, iteration, n // 2, 23), 1 - 2 * (n % 2)) for n in range(size)]
    return [Member(seed_for(seed, iteration, n, 23)) for n in range(size)]


def noise(param: torch.Tensor, seed: int, layer: int) -> torch.Tensor:
    """eps ~ N(0, 1) shaped like `param` (fp32), from (seed, layer index) alone."""
    generator = torch.Generator().manual_seed(seed_for(seed, layer))
    return torch.randn(param.shape, generator=generator, dtype=torch.float32)


@torch.no_grad()
def perturb(params: Sequence[torch.Tensor], member: Member, sigma: float) -> list[Fix]:
    """params += sign * sigma * eps in place; returns what `restore` needs to undo it exactly."""
    fixes = []
    for i, p in enumerate(params):
        d = (noise(p, member.seed, i) * (member.sign * sigma)).to(p.dtype)
        moved = p + d
        wrong = ((moved - d) != p).view(-1).nonzero().squeeze(1)
        fixes.append((wrong, p.view(-1)[wrong].clone()))
        p.copy_(moved)
    return fixes


@torch.no_grad()
def restore(params: Sequence[torch.Tensor], member: Member, sigma: float, fixes: list[Fix]) -> None:
    """Undo `perturb(params, member, sigma)`: bit-identical weights."""
    for i, (p, (index, values)) in enumerate(zip(params, fixes)):
        p.sub_((noise(p, member.seed, i) * (member.sign * sigma)).to(p.dtype))
        p.view(-1)[index] = values


def gradient(param: torch.Tensor, layer: int, members: Sequence[Member], weights: Sequence[float]) -> torch.Tensor:
    """mean_n(weight_n * sign_n * eps_n) for one layer: the ES estimate of the reward's gradient direction."""
    coefficients: dict[int, float] = {}  # antithetic pairs share a seed: one noise draw per seed
    for member, weight in zip(members, weights):
        coefficients[member.seed] = coefficients.get(member.seed, 0.0) + float(weight) * member.sign
    total = torch.zeros(param.shape, dtype=torch.float32)
    for seed, coefficient in coefficients.items():
        total.add_(noise(param, seed, layer), alpha=coefficient)
    return total / len(members)


class Adam:
    """Adam on the ES gradient (ascent), its moments kept per layer in fp32; state is plain tensors."""

    def __init__(self, params: Sequence[torch.Tensor], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.betas, self.eps, self.step_count = betas, eps, 0
        self.m = [torch.zeros(p.shape, dtype=torch.float32) for p in params]
        self.v = [torch.zeros(p.shape, dtype=torch.float32) for p in params]

    def direction(self, layer: int, g: torch.Tensor) -> torch.Tensor:
        """The step direction of `layer` for gradient `g` (call `tick` once per update first)."""
        b1, b2 = self.betas
        self.m[layer].mul_(b1).add_(g, alpha=1 - b1)
        self.v[layer].mul_(b2).addcmul_(g, g, value=1 - b2)
        m_hat = self.m[layer] / (1 - b1 ** self.step_count)
        v_hat = self.v[layer] / (1 - b2 ** self.step_count)
        return m_hat / (v_hat.sqrt() + self.eps)

    def tick(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict:
        return {"step": self.step_count, "m": [m.clone() for m in self.m], "v": [v.clone() for v in self.v]}

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.m, self.v = state["step"], state["m"], state["v"]


@torch.no_grad()
def update(params: Sequence[torch.Tensor], members: Sequence[Member], weights: Sequence[float], lr: float,
           adam: Adam | None = None) -> float:
    """theta += lr * mean_n(weight_n * eps_n) (or Adam's direction for it), layer by layer. Returns the update's
    L2 norm."""
    if adam is not None:
        adam.tick()
    squares = 0.0
    for i, p in enumerate(params):
        g = gradient(p, i, members, weights)
        step = lr * (adam.direction(i, g) if adam is not None else g)
        p.add_(step.to(p.dtype))
        squares += float(step.double().pow(2).sum())
    return squares ** 0.5
