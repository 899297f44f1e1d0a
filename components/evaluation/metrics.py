"""Evaluation metrics on plain lists, exact and testable by hand."""
from __future__ import annotations

from collections import defaultdict


def held_out(quantity: str, model: str = "policy") -> str:
    """The one metric name of `quantity` (gold_mean, score_mean, kl_to_ref, gold_win_rate_vs_sft, ...) measured on
    held-out prompts: `eval/<quantity>` for the policy being trained or evaluated, `eval/<model>/<quantity>` for
    another model (sft, champion, PPO's initial policy). PPO's periodic evaluations, the evaluation stage and the
    pipeline's MLflow run all name them here, so one quantity is one column in MLflow's runs table."""
    return f"eval/{quantity}" if model == "policy" else f"eval/{model}/{quantity}"


def policy_names(policies) -> dict[str, str]:
    """The model name each trained policy's held-out numbers carry: one policy is "policy" (`eval/<q>`), several
    are named by algorithm (`eval/ppo/<q>`, `eval/dpo/<q>`). `policies`: algorithm names in pipeline order."""
    policies = list(policies)
    return {p: "policy" if len(policies) == 1 else p for p in policies}


def per_prompt_means(rows: list[dict], key: str) -> dict[int, float]:
    """Mean of `key` over the samples of each prompt: rows carry `prompt_index` and `key`."""
    groups: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        groups[row["prompt_index"]].append(float(row[key]))
    return {i: sum(v) / len(v) for i, v in groups.items()}


def win_rate(candidate: dict[int, float], baseline: dict[int, float]) -> float:
    """Fraction of prompts where the candidate's score beats the baseline's; a tie counts one half.
    Both map prompt index -> score; only prompts present in both count."""
    shared = sorted(set(candidate) & set(baseline))
    if not shared:
        raise ValueError("no prompt is scored for both the candidate and the baseline")
    wins = sum(1.0 if candidate[i] > baseline[i] else 0.5 if candidate[i] == baseline[i] else 0.0 for i in shared)
    return wins / len(shared)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams over `texts`; 0 when there are none."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
