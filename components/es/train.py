"""ES entry points: `train(prompts, reward_fn=...)` and `run(...)` (the pipeline stage: data prep's prompts, the SFT
policy, the reward model). Each iteration every member (a perturbation of the policy) answers the same prompts with
the same sampling seeds; its reward is the mean weighted reward over them. Members are sharded over ranks and only
their rewards travel (an all-reduce of N floats); every rank then applies the same update, so N ranks equal 1.

A checkpoint is the trainable weights at some iteration (`base.pt`) plus one line per later iteration with its
members' seeds and weights (`log.jsonl`, appended each iteration): a resume loads the base and replays the updates
bit-for-bit without a forward pass.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from components.compute import engine as ds
from components.compute.engine import is_rank0, world
from components.compute.loop import LogFn, metrics_file, reproducible
from components.compute.seeds import seed_for
from components.data.prepare import load_data_tokenizer
from components.errors import ConfigError
from components.es import noise
from components.es.config import ESConfig
from components.es.shaping import SHAPING
from components.evaluation.metrics import held_out, per_prompt_means, win_rate
from components.io.atomic import atomic_dir
from components.models.config import ModelSpec, ScorerSpec
from components.models.loading import causal_lm, disable_dropout, load_tokenizer, save_pretrained
from components.models.lora import merged, trainable
from components.models.precision import autocast
from components.ppo.api import PPOResult, as_spec, encode_prompts, stage_inputs
from components.ppo.models import Actor
from components.ppo.rewards import RewardFn, RewardTerm, combine_scores, reward_terms
from components.ppo.rollout import decode_responses, left_pad, rollout, score_terms
from components.reward.scoring import load_scorer

log = logging.getLogger(__name__)


class ES:
    """The policy, its trainable parameters (every weight, or the LoRA adapters), the scorer and reward terms."""

    def __init__(self, config: ESConfig, lm, tokenizer, scorer, terms: list[RewardTerm]):
        self.config, self.lm, self.tokenizer, self.scorer, self.terms = config, lm, tokenizer, scorer, terms
        self.actor = Actor(lm, value_head=False)
        self.params = [p.data for p in lm.parameters() if p.requires_grad]
        self.adam = noise.Adam(self.params) if config.optimizer == "adam" else None
        self.iteration = 0

    @torch.no_grad()
    def answer(self, prompts: list[list[int]], texts: list[str], messages: list | None, seed: int):
        """Sample one response per prompt (sampling seeded by `seed`, so every member draws the same random
        numbers) and score it. Returns (weighted scores (n,), per-term scores (n, K), keep (n,), responses)."""
        out, chunk = [], self.config.compute.micro_batch_size
        torch.manual_seed(seed)
        for start in range(0, len(prompts), chunk):
            part = slice(start, start + chunk)
            ids, mask = left_pad(prompts[part], self.tokenizer.pad_token_id)
            batch = rollout(self.actor, self.lm, ids, mask, self.config.rollout, self.tokenizer)
            responses = decode_responses(batch, self.tokenizer)
            with autocast(self.config.compute.precision):  # a bf16 frozen scorer runs under autocast
                raw = score_terms(batch, responses, self.scorer, self.terms, texts[part],
                                  messages[part] if messages else None)
            out.append((*combine_scores(raw, self.terms, len(responses), "error"), responses))
        return (torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out]), torch.cat([o[2] for o in out]),
                [r for o in out for r in o[3]])

    def step(self, prompts: list[list[int]], texts: list[str], messages: list | None) -> dict[str, float]:
        """Evaluate this rank's members on the iteration's prompts, share the rewards, update. Returns metrics and
        records the members and weights of the update in `self.last`."""
        c, (rank, world_size) = self.config, world()
        t0 = time.perf_counter()
        members = noise.population(c.seed, self.iteration, c.population_size, c.antithetic)
        rewards = torch.zeros(len(members), dtype=torch.float64)
        terms = torch.zeros(len(members), len(self.terms), dtype=torch.float64)
        sample_seed = seed_for(c.seed, self.iteration, 29)  # common random numbers across members
        for n in range(rank, len(members), world_size):
            fixes = noise.perturb(self.params, members[n], c.sigma)
            scores, per_term, _, _ = self.answer(prompts, texts, messages, sample_seed)
            noise.restore(self.params, members[n], c.sigma, fixes)
            rewards[n], terms[n] = scores.double().mean(), per_term.double().mean(0)
        if world_size > 1:  # each member's reward was filled by exactly one rank
            dist.all_reduce(rewards)
            dist.all_reduce(terms)
        t1 = time.perf_counter()
        weights = SHAPING[c.shaping](rewards).tolist()
        norm = noise.update(self.params, members, weights, c.lr, self.adam)
        self.last = {"iteration": self.iteration, "seeds": [m.seed for m in members],
                     "signs": [m.sign for m in members], "weights": weights}
        self.iteration += 1
        seconds = time.perf_counter() - t0
        return {"es/reward_mean": rewards.mean().item(), "es/reward_std": rewards.std(unbiased=False).item(),
                "es/reward_max": rewards.max().item(), "es/update_norm": norm,
                **{f"rewards/{t.name}/mean": terms[:, k].mean().item() for k, t in enumerate(self.terms)},
                "time/evaluate": t1 - t0, "time/update": seconds - (t1 - t0), "time/iteration": seconds,
                "perf/members_per_s": len(members) / seconds}

    def replay(self, entry: dict) -> None:
        """Apply a logged update again (resume): the same members and weights give bit-identical weights."""
        members = [noise.Member(s, g) for s, g in zip(entry["seeds"], entry["signs"])]
        noise.update(self.params, members, entry["weights"], self.config.lr, self.adam)
        self.iteration = entry["iteration"] + 1

    @torch.no_grad()
    def evaluate(self, prompts: list[list[int]], texts: list[str], gold_fn: RewardFn | None,
                 messages: list | None) -> tuple[dict[str, float], list[dict]]:
        """The unperturbed policy on held-out prompts, eval_samples each: mean score, gold and length, and rows."""
        rows = []
        for k in range(self.config.eval_samples):
            scores, _, _, responses = self.answer(prompts, texts, messages, seed_for(self.config.seed, 31, k))
            gold = gold_fn(texts, responses) if gold_fn else [None] * len(responses)
            rows += [{"prompt_index": i, "prompt": texts[i], "response": r, "score": float(s), "gold": g,
                      "length": len(self.tokenizer(r, add_special_tokens=False)["input_ids"])}
                     for i, (r, s, g) in enumerate(zip(responses, scores.tolist(), gold))]
        metrics = {"score_mean": float(np.mean([r["score"] for r in rows])),
                   "length_mean": float(np.mean([r["length"] for r in rows]))}
        if gold_fn is not None:
            metrics["gold_mean"] = float(np.mean([r["gold"] for r in rows]))
        return metrics, rows


class Checkpoints:
    """`base.pt` (trainable weights, Adam moments, iteration) rewritten every `every` iterations, and `log.jsonl`,
    one line per iteration since the base (rank 0 writes; every rank reads)."""

    def __init__(self, directory: str | Path | None, every: int, on_save: Callable[[], None] | None = None):
        self.dir, self.every, self.on_save = (Path(directory) if directory else None), every, on_save

    def save(self, es: ES) -> None:
        if self.dir is None or not is_rank0():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.every and es.iteration % self.every == 0:  # a new base; the log restarts
            state = {"iteration": es.iteration, "params": es.params,
                     "adam": es.adam.state_dict() if es.adam else None}
            torch.save(state, self.dir / "base.tmp")
            (self.dir / "base.tmp").replace(self.dir / "base.pt")
            (self.dir / "log.jsonl").write_text("")
        elif (self.dir / "base.pt").exists():
            with open(self.dir / "log.jsonl", "a") as f:
                f.write(json.dumps(es.last) + "\n")
        if self.on_save is not None:
            self.on_save()

    def resume(self, es: ES) -> bool:
        """Load the base and replay the log; False when there is nothing to resume."""
        if self.dir is None or not (self.dir / "base.pt").exists():
            return False
        state = torch.load(self.dir / "base.pt", weights_only=True)
        for p, saved in zip(es.params, state["params"]):
            p.copy_(saved)
        if es.adam is not None and state["adam"] is not None:
            es.adam.load_state_dict(state["adam"])
        es.iteration = state["iteration"]
        log_file = self.dir / "log.jsonl"
        for line in log_file.read_text().splitlines() if log_file.exists() else []:
            entry = json.loads(line)
            if entry["iteration"] == es.iteration:  # a line written before a crash mid-append is skipped
                es.replay(entry)
        return True


def train(prompts: list[str], reward_fn: RewardFn | Sequence[RewardFn] | None = None,
          config: ESConfig | None = None, *, reward_weights: Sequence[float] | None = None,
          model: str | ModelSpec | None = None, reward_model: str | ScorerSpec | None = None, tokenizer=None,
          eval_prompts: list[str] | None = None, gold_fn: RewardFn | None = None, out_dir: str | Path | None = None,
          checkpoint_dir: str | Path | None = None, on_log: LogFn | None = None,
          on_samples: Callable[[int, list[dict]], None] | None = None,
          prompt_messages: list | None = None, eval_messages: list | None = None,
          on_checkpoint: Callable[[], None] | None = None) -> PPOResult:
    """Fine-tune `model` (or config.model) with evolution strategies on `prompts`, rewarded as PPO is (`reward_fn`
    functions and/or a reward model, or config.rewards). With `checkpoint_dir` a run resumes from what is there."""
    config = config or ESConfig()
    policy = as_spec(model) or config.model
    scorer_spec = as_spec(reward_model, ScorerSpec) or config.reward_model
    if policy is None:
        raise ConfigError("es.model: no initial policy given")
    terms = reward_terms(config.rewards, reward_fn, reward_weights, has_model=scorer_spec is not None)
    ds.init_distributed()
    tokenizer = tokenizer or load_tokenizer(policy.name_or_path, field="es.model")
    torch.manual_seed(config.seed)
    lm = trainable(disable_dropout(causal_lm(policy, tokenizer, field="es.model")), config.lora, "CAUSAL_LM")
    lm.eval()
    scorer = None
    if any(t.fn is None for t in terms):
        scorer = load_scorer(scorer_spec, tokenizer, "es.reward_model",
                             lambda m: ds.inference(m, config.compute), config.seed + 2)
    es = ES(config, lm, tokenizer, scorer, terms)
    max_positions = lm.config.max_position_embeddings
    encoded = encode_prompts(tokenizer, prompts, config.rollout.max_new_tokens, max_positions)
    eval_encoded = encode_prompts(tokenizer, eval_prompts, config.rollout.max_new_tokens, max_positions,
                                  "eval_prompts") if eval_prompts else []
    checkpoints = Checkpoints(checkpoint_dir, config.checkpoint_every, on_checkpoint)
    result, history = PPOResult(metrics={}), []

    def report(metrics: dict[str, float], show: bool = True) -> None:
        history.append({"iteration": es.iteration, **metrics})
        if is_rank0():
            if show:
                log.info("es iteration %d/%d %s", es.iteration, config.iterations, " ".join(
                    f"{k}={v:.4g}" for k, v in metrics.items() if math.isfinite(v) and not k.startswith(("time/", "perf/"))))
            if on_log is not None:
                on_log(es.iteration, metrics)

    def evaluate() -> None:
        metrics, result.eval_rows = es.evaluate(eval_encoded, list(eval_prompts), gold_fn, eval_messages)
        if result.eval_before_rows:
            key = "gold" if gold_fn is not None else "score"
            metrics[f"{key}_win_rate_vs_initial"] = win_rate(per_prompt_means(result.eval_rows, key),
                                                             per_prompt_means(result.eval_before_rows, key))
        named = {held_out(k): v for k, v in metrics.items()}
        result.metrics.update(named)
        report(named)
        if on_samples is not None and is_rank0():
            on_samples(es.iteration, result.eval_rows)

    if checkpoints.resume(es):
        log.info("es resumed at iteration %d from %s", es.iteration, checkpoint_dir)
    if eval_encoded:  # the initial policy (also after a resume: the SFT weights are not at hand then)
        if es.iteration == 0:
            evaluate()
            result.metrics = {held_out(k.removeprefix(held_out("")), "initial"): v for k, v in result.metrics.items()}
            result.eval_before_rows = result.eval_rows
    if es.iteration == 0:
        checkpoints.save(es)  # the base: the initial weights
    n, b = len(encoded), min(config.batch_size, len(encoded))
    while es.iteration < config.iterations:
        order = np.random.default_rng(seed_for(config.seed, es.iteration, 7)).permutation(n)[:b]
        stats = es.step([encoded[i] for i in order], [prompts[i] for i in order],
                        [prompt_messages[i] for i in order] if prompt_messages else None)
        result.metrics.update(stats)
        report(stats, show=es.iteration % config.log_every == 0 or es.iteration == config.iterations)
        checkpoints.save(es)
        if eval_encoded and (es.iteration % config.eval_every == 0 or es.iteration == config.iterations):
            evaluate()
    result.history = history
    if out_dir is not None and is_rank0():
        with atomic_dir(out_dir) as tmp:
            save_pretrained(merged(lm), tokenizer, tmp)
            (tmp / "metrics.json").write_text(metrics_file(result.metrics))
            (tmp / "history.jsonl").write_text("".join(json.dumps(reproducible(h)) + "\n" for h in history))
            (tmp / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in result.eval_rows))
    if dist.is_initialized():
        dist.barrier()
    return result


def run(config: ESConfig, data_dir: str | Path, out_dir: str | Path, policy_dir: str | Path | None,
        reward_dir: str | Path | None, gold_fn: RewardFn | None = None, checkpoint_dir: str | Path | None = None,
        on_log: LogFn | None = None, on_samples: Callable[[int, list[dict]], None] | None = None,
        on_checkpoint: Callable[[], None] | None = None) -> PPOResult:
    """The pipeline stage, on PPO's inputs: the prompts of preference_train, held-out eval_prompts, the SFT policy
    and (when a term of es.rewards is the reward model) the reward model; writes the policy to `out_dir`."""
    policy, scorer, records, evals = stage_inputs(config, data_dir, policy_dir, reward_dir, "es")
    return train([r["prompt"] for r in records], config=config, model=policy, reward_model=scorer,
                 tokenizer=load_data_tokenizer(data_dir),
                 eval_prompts=[r["prompt"] for r in evals], gold_fn=gold_fn, out_dir=out_dir,
                 checkpoint_dir=checkpoint_dir, on_log=on_log, on_samples=on_samples,
                 prompt_messages=[r.get("prompt_messages") for r in records],
                 eval_messages=[r.get("prompt_messages") for r in evals], on_checkpoint=on_checkpoint)
