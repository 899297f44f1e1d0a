"""A sampled batch made complete: the reference's log-probs of its tokens, a separate critic's values, and the
reward (each term's score, their weighted sum, which samples are finite), in one function that returns the
finished batch; and `scored_rollout`, sampling and scoring in one call."""
from __future__ import annotations

from dataclasses import replace

import torch

from components.models.precision import autocast
from components.rl.config import RolloutConfig
from components.rl.generation import (Actor, Rollout, decode_responses, left_pad, response_logprobs, response_values,
                                      rollout)
from components.rl.rewards import Reward, RewardFn, combine_scores, score_terms


@torch.no_grad()
def score(batch: Rollout, prompts: list[str], reward: Reward, tokenizer, *, reference=None, critic=None,
          temperature: float = 1.0, messages: list | None = None, precision: str = "fp32") -> tuple[Rollout, list[str]]:
    """`batch` (as `rollout` sampled it) with ref_logprobs (from `reference`; None: the policy's own, i.e. zero KL),
    a separate `critic`'s values (else the rollout's), and scores, term_scores and keep filled; and the response
    texts. `messages` are the prompts as chat messages where known (a scorer with its own chat template renders
    them). Frozen models forward under `precision`'s autocast; the terms are combined in fp32 outside it."""
    ids, mask, r = batch.input_ids, batch.attention_mask, batch.n_response
    with autocast(precision):
        ref_logprobs = (batch.logprobs.clone() if reference is None
                        else response_logprobs(reference, ids, mask, r, temperature) * batch.response_mask)
        values = response_values(critic, ids, mask, r) if critic is not None else batch.values
        responses = decode_responses(batch, tokenizer)
        raw = score_terms(batch, responses, reward.scorer, reward.terms, prompts, messages)
    scores, term_scores, keep = combine_scores(raw, reward.terms, len(responses), reward.nonfinite)
    return replace(batch, ref_logprobs=ref_logprobs, values=values, scores=scores, term_scores=term_scores,
                   keep=keep), responses


def scored_rollout(actor: Actor, prompts: list[list[int]], texts: list[str], reward: Reward, config: RolloutConfig,
                   tokenizer, messages: list | None = None, precision: str = "fp32") -> tuple[Rollout, list[str]]:
    """Sample one response per prompt (token ids, left-padded here) from a plain `actor` and score it: the
    finished batch and the response texts."""
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    batch = rollout(actor, actor.lm, ids, mask, config, tokenizer)
    return score(batch, texts, reward, tokenizer, messages=messages, precision=precision)


def sample_rows(batch: Rollout, responses: list[str], scores, indices: list[int], texts: list[str],
                gold_fn: RewardFn | None) -> list[dict]:
    """One row per sample: prompt index and text, response, score, gold score (None without a gold scorer),
    KL to the reference (summed k1 over the response; needs batch.ref_logprobs) and length."""
    kl = ((batch.logprobs - batch.ref_logprobs) * batch.response_mask).sum(1)
    gold = gold_fn([texts[i] for i in indices], responses) if gold_fn else [None] * len(indices)
    return [{"prompt_index": i, "prompt": texts[i], "response": r, "score": float(s), "gold": g, "kl": float(k),
             "length": int(n)}
            for i, r, s, g, k, n in zip(indices, responses, scores, gold, kl, batch.response_mask.sum(1))]
