"""The promotion gate and the reward-hacking signal: plain numbers in, a decision out."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate: float
    champion: float | None


def decide(metrics: dict[str, float], metric: str, margin: float, sft_margin: float = 0.0,
           min_win_rate_vs_sft: float | None = 0.5) -> Decision:
    """Promote when policy/<metric> beats the SFT baseline (by more than `sft_margin`, winning at least
    `min_win_rate_vs_sft` of prompts; None skips this check) and there is no champion or
    policy/<metric> >= champion/<metric> + margin."""
    candidate, champion = metrics[f"policy/{metric}"], metrics.get(f"champion/{metric}")
    sft = metrics.get(f"sft/{metric}") if min_win_rate_vs_sft is not None else None
    win_key = f"policy/{metric.removesuffix('_mean')}_win_rate_vs_sft"
    if sft is not None and not candidate > sft + sft_margin:
        return Decision(False, f"candidate {metric}={candidate:.4g} does not beat SFT {sft:.4g} + margin "
                               f"{sft_margin:g}", candidate, champion)
    if sft is not None and win_key in metrics and metrics[win_key] < min_win_rate_vs_sft:
        return Decision(False, f"candidate wins {metrics[win_key]:.0%} of prompts against SFT, under the required "
                               f"{min_win_rate_vs_sft:.0%}", candidate, champion)
    vs_sft = ((f"beats SFT ({metric} {candidate:.4g} > {sft:.4g} + {sft_margin:g}"
               + (f", wins {metrics[win_key]:.0%} of prompts" if win_key in metrics else "") + ")")
              if sft is not None else "not compared with SFT")
    if champion is None:
        return Decision(True, "; ".join(filter(None, [vs_sft, f"no champion yet; candidate {metric}={candidate:.4g}"])),
                        candidate, None)
    if candidate >= champion + margin:
        return Decision(True, "; ".join(filter(None, [vs_sft, f"candidate {metric}={candidate:.4g} >= champion "
                                                              f"{champion:.4g} + margin {margin:g}"])), candidate, champion)
    return Decision(False, f"candidate {metric}={candidate:.4g} < champion {champion:.4g} + margin {margin:g}",
                    candidate, champion)


def reward_hacking(metrics: dict[str, float], threshold: float) -> tuple[bool, float]:
    """(flagged, excess): excess = reward-model gain minus gold gain over SFT, each in SFT standard deviations.
    A policy that pleases the reward model far more than the gold scorer is exploiting the reward model."""
    def gain(key: str) -> float:
        return (metrics[f"policy/{key}_mean"] - metrics[f"sft/{key}_mean"]) / max(metrics[f"sft/{key}_std"], 1e-6)

    excess = gain("score") - gain("gold")
    return excess > threshold, excess
