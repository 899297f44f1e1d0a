"""The evaluation stage: the policy and its baselines on held-out prompts, scored the same way.

For each model: reward-model score, gold score (when a gold scorer is given), distinct-1/2, response length,
perplexity on the SFT eval split; for the policy also its KL to the reference (the SFT model) and win-rates
against each baseline by gold and by reward model (per prompt, mean over samples, ties count half).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from components.data.prepare import load_data_tokenizer, read_split
from components.evaluation.config import EvaluationConfig
from components.evaluation import report
from components.evaluation.gate import best_candidate, reward_hacking
from components.evaluation.metrics import distinct_n, held_out, per_prompt_means, policy_names, win_rate
from components.io.atomic import atomic_dir
from components.models.config import ModelSpec, ScorerSpec
from components.models.loading import causal_lm, disable_dropout
from components.rl.generation import Actor, decode_responses, left_pad, response_logprobs, rollout
from components.rl.rewards import RewardFn
from components.rl.scoring import sample_rows
from components.reward.scoring import Scorer, load_scorer
from components.sft.data import encode
from components.sft.train import evaluate_loss


def _load(path: str | Path, tokenizer, kind):
    return disable_dropout(kind(ModelSpec(name_or_path=str(path)), tokenizer, field="evaluate")).eval()


@torch.no_grad()
def sample(config: EvaluationConfig, lm, reference, scorer: Scorer, tokenizer, prompts: list[str],
           gold_fn: RewardFn | None, messages: list | None = None) -> list[dict]:
    """One row per (prompt, sample): response, reward-model score, gold score, KL to the reference, length."""
    actor, rows = Actor(lm, value_head=False), []
    indices = [i for i in range(len(prompts)) for _ in range(config.samples_per_prompt)]
    torch.manual_seed(config.seed)
    for start in range(0, len(indices), config.batch_size):
        chunk = indices[start:start + config.batch_size]
        ids, mask = left_pad([tokenizer(prompts[i], add_special_tokens=False)["input_ids"] for i in chunk],
                             tokenizer.pad_token_id)
        batch = rollout(actor, lm, ids, mask, config.rollout, tokenizer)
        batch.ref_logprobs = response_logprobs(reference, batch.input_ids, batch.attention_mask, batch.n_response,
                                               config.rollout.temperature) * batch.response_mask
        responses = decode_responses(batch, tokenizer)
        scores = scorer(batch.input_ids, batch.attention_mask, [prompts[i] for i in chunk], responses, batch.has_eos,
                        [messages[i] for i in chunk] if messages else None)
        rows += sample_rows(batch, responses, scores, chunk, prompts, gold_fn)
    return rows


def summarize(rows: list[dict], has_gold: bool) -> dict[str, float]:
    texts = [r["response"] for r in rows]
    out = {"score_mean": float(np.mean([r["score"] for r in rows])), "kl_to_ref": float(np.mean([r["kl"] for r in rows])),
           "length_mean": float(np.mean([r["length"] for r in rows])),
           "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2)}
    out["score_std"] = float(np.std([r["score"] for r in rows]))
    if has_gold:
        out["gold_mean"] = float(np.mean([r["gold"] for r in rows]))
        out["gold_std"] = float(np.std([r["gold"] for r in rows]))
    return out


def run(config: EvaluationConfig, data_dir: str | Path, policies: dict[str, str | Path], baselines: dict[str, str | Path],
        scorer_spec: ScorerSpec, out_dir: str | Path, max_length: int, gold_fn: RewardFn | None = None,
        select_by: str = "score_mean") -> dict:
    """Evaluate each trained policy (algorithm name -> model dir) and each baseline (name -> model dir; "sft" is
    also the KL reference) on the eval_prompts split, scored by `scorer_spec` (the reward model PPO used); write
    report.json, samples.jsonl and the report to `out_dir` atomically; return flat metrics.

    Names: one policy is `eval/<q>`. Several are each `eval/<algorithm>/<q>`, with win rates against the baselines
    and each other, and the best by `select_by` (the candidate the gate judges, `candidate` in report.json) is
    also `eval/<q>`, so runs that train different policies share their candidate's columns."""
    tokenizer = load_data_tokenizer(data_dir)
    records = read_split(data_dir, "eval_prompts")
    prompts, messages = [r["prompt"] for r in records], [r.get("prompt_messages") for r in records]
    sft_eval = [encode(tokenizer, r["prompt"], r["completion"], max_length) for r in read_split(data_dir, "sft_eval")]
    reference = _load(baselines["sft"], tokenizer, causal_lm)
    scorer = load_scorer(scorer_spec, tokenizer, "evaluate scorer")
    candidates = {name: policies[p] for p, name in policy_names(policies).items()}
    metrics, all_rows, per_model = {}, [], {}
    for name, path in {**candidates, **baselines}.items():
        lm = _load(path, tokenizer, causal_lm)
        rows = sample(config, lm, reference, scorer, tokenizer, prompts, gold_fn, messages)
        per_model[name] = rows
        summary = summarize(rows, gold_fn is not None)
        with torch.no_grad():  # 8 at a time: the full-vocabulary logits of 64 examples were 1.2 GB on SmolLM2
            summary["sft_eval_perplexity"] = evaluate_loss(lm, sft_eval, tokenizer.pad_token_id, 8)["perplexity"]
        metrics.update({held_out(k, name): v for k, v in summary.items()})
        all_rows += [{"model": name, **r} for r in rows]
        del lm  # before the next model loads
    for name in candidates:
        for other in [*baselines, *(c for c in candidates if c != name)]:
            for key in (("gold", "score") if gold_fn else ("score",)):
                metrics[held_out(f"{key}_win_rate_vs_{other}", name)] = win_rate(
                    per_prompt_means(per_model[name], key), per_prompt_means(per_model[other], key))
        if gold_fn is not None:
            flagged, excess = reward_hacking(metrics, config.reward_hacking_threshold, name)
            metrics.update({held_out("reward_hacking", name): float(flagged),
                            held_out("reward_hacking_excess", name): excess})
    chosen = best_candidate(metrics, list(candidates), select_by)
    if chosen != "policy":
        prefix = held_out("", chosen)
        metrics.update({held_out(k.removeprefix(prefix)): v for k, v in list(metrics.items()) if k.startswith(prefix)})
    with atomic_dir(out_dir) as tmp:
        (tmp / "report.json").write_text(json.dumps({"candidate": chosen, "metrics": metrics}, indent=1, sort_keys=True))
        (tmp / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in all_rows))
        history = report.read_history(policies.get("ppo") or next(iter(policies.values())))
        report.write(tmp, metrics, all_rows, history, config.reward_hacking_threshold, select_by)
    return metrics
