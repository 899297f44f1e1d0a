"""KL coefficient controllers. Their state is plain data (`state_dict()` / `from_state`), so it checkpoints."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class FixedKLController:
    """beta stays at its initial value."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"kind": "fixed", **asdict(self)}


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", eq. 2 (as in trlx):
    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon)."""

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"kind": "adaptive", **asdict(self)}


KLController = FixedKLController | AdaptiveKLController


def from_state(state: dict) -> KLController:
    """Rebuild a controller from `state_dict()` output."""
    fields = {k: v for k, v in state.items() if k != "kind"}
    return AdaptiveKLController(**fields) if state["kind"] == "adaptive" else FixedKLController(**fields)
