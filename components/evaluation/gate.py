"""The promotion gate and the reward-hacking signal: plain numbers in, a decision out."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate: float
    champion: float | None


def decide(metrics: dict[str, float], metric: str, margin: float) -> Decision:
    """Promote when there is no champion, or when policy/<metric> >= champion/<metric> + margin."""
    candidate, champion = metrics[f"policy/{metric}"], metrics.get(f"champion/{metric}")
    if champion is None:
        return Decision(True, f"no champion yet; candidate {metric}={candidate:.4g}", candidate, None)
    if candidate >= champion + margin:
        return Decision(True, f"candidate {metric}={candidate:.4g} >= champion {champion:.4g} + margin {margin:g}",
                        candidate, champion)
    return Decision(False, f"candidate {metric}={candidate:.4g} < champion {champion:.4g} + margin {margin:g}",
                    candidate, champion)


def reward_hacking(metrics: dict[str, float], threshold: float) -> tuple[bool, float]:
    """(flagged, excess): excess = reward-model gain minus gold gain over SFT, each in SFT standard deviations.
    A policy that pleases the reward model far more than the gold scorer is exploiting the reward model."""
    def gain(key: str) -> float:
        return (metrics[f"policy/{key}_mean"] - metrics[f"sft/{key}_mean"]) / max(metrics[f"sft/{key}_std"], 1e-6)

    excess = gain("score") - gain("gold")
    return excess > threshold, excess
