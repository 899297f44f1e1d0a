"""The promotion gate and the reward-hacking signal: plain numbers in, a decision out."""
from __future__ import annotations

from dataclasses import dataclass

from components.evaluation.metrics import held_out


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate: float
    champion: float | None


def decide(metrics: dict[str, float], metric: str, margin: float, sft_margin: float = 0.0,
           min_win_rate_vs_sft: float | None = 0.5) -> Decision:
    """Promote when the policy's `metric` (eval/<metric>) beats the SFT baseline's (eval/sft/<metric>) by more than
    `sft_margin`, winning at least `min_win_rate_vs_sft` of prompts (None skips this check), and there is no
    champion or the policy's >= the champion's (eval/champion/<metric>) + margin."""
    candidate, champion = metrics[held_out(metric)], metrics.get(held_out(metric, "champion"))
    sft = metrics.get(held_out(metric, "sft")) if min_win_rate_vs_sft is not None else None
    win_key = held_out(f"{metric.removesuffix('_mean')}_win_rate_vs_sft")
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


def best_candidate(metrics: dict[str, float], candidates: list[str], metric: str) -> str:
    """Of the policies evaluated side by side (names as in eval/<name>/<metric>), the one with the highest
    `metric`; the first on a tie. A single candidate is chosen as it is."""
    if len(candidates) == 1:
        return candidates[0]
    return max(candidates, key=lambda name: metrics[held_out(metric, name)])


def choice_reason(metrics: dict[str, float], candidates: list[str], metric: str) -> str:
    """Why `best_candidate` chose what it chose, for the gate's reason ("" for a single candidate)."""
    if len(candidates) == 1:
        return ""
    best = best_candidate(metrics, candidates, metric)
    others = ", ".join(f"{c} {metrics[held_out(metric, c)]:.4g}" for c in candidates if c != best)
    return f"{best} chosen by {metric} ({metrics[held_out(metric, best)]:.4g} vs {others})"


def reward_hacking(metrics: dict[str, float], threshold: float, model: str = "policy") -> tuple[bool, float]:
    """(flagged, excess) of `model`: excess = reward-model gain minus gold gain over SFT, each in SFT standard
    deviations. A policy that pleases the reward model far more than the gold scorer is exploiting the reward model."""
    def gain(key: str) -> float:
        sft_std = max(metrics[held_out(f"{key}_std", "sft")], 1e-6)
        return (metrics[held_out(f"{key}_mean", model)] - metrics[held_out(f"{key}_mean", "sft")]) / sft_std

    excess = gain("score") - gain("gold")
    return excess > threshold, excess
