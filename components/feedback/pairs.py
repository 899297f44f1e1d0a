"""Pairs of responses for people to compare: two samples of the policy, or the policy against a baseline
(A/B order shuffled, so the position never tells which model wrote it)."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from components.data.prepare import load_data_tokenizer, read_split
from components.models.config import ModelSpec
from components.models.loading import causal_lm, disable_dropout
from components.rl.config import RolloutConfig
from components.rl.generation import sample_texts


def make_pairs(data_dir: str | Path, policy_dir: str | Path, baseline_dir: str | Path | None, n: int, seed: int,
               rollout: RolloutConfig | None = None) -> list[dict]:
    """`n` pairs on prompts drawn from the eval_prompts split: {"pair", "prompt", "response_a", "response_b",
    "source_a", "source_b"}."""
    tokenizer, rng = load_data_tokenizer(data_dir), random.Random(seed)
    pool = [r["prompt"] for r in read_split(data_dir, "eval_prompts")]
    prompts = [pool[rng.randrange(len(pool))] for _ in range(n)]
    rollout = rollout or RolloutConfig()

    def responses(path, salt: int) -> list[str]:
        lm = disable_dropout(causal_lm(ModelSpec(name_or_path=str(path)), tokenizer, field="feedback")).eval()
        torch.manual_seed(seed * 1000 + salt)
        return sample_texts(lm, tokenizer, prompts, rollout)

    first = responses(policy_dir, 1)
    second = responses(baseline_dir or policy_dir, 2)
    names = ("policy", "baseline" if baseline_dir else "policy")
    pairs = []
    for i, (prompt, x, y) in enumerate(zip(prompts, first, second)):
        swap = baseline_dir is not None and rng.random() < 0.5
        (a, sa), (b, sb) = ((y, names[1]), (x, names[0])) if swap else ((x, names[0]), (y, names[1]))
        pairs.append({"pair": i, "prompt": prompt, "response_a": a, "response_b": b, "source_a": sa, "source_b": sb})
    return pairs
