"""ES entry points: `train(prompts, reward_fn=...)` and `run(config, inputs, out, hooks)` (the pipeline stage: data
prep's prompts, the SFT policy, the reward model). Each iteration every member (a perturbation of the policy)
answers the same prompts with the same sampling seeds; its reward is the mean weighted reward over them. Members are
sharded over ranks and only their rewards travel (an all-reduce of N floats); every rank then applies the same
update, so N ranks equal 1. The loop around `ES.step()` (evaluations, history, resume) is the RL core's `fit`.

A checkpoint is the trainable weights at some iteration (`base.pt`) plus one line per later iteration with its
members' seeds and weights (`log.jsonl`, appended each iteration), and the driver's result so far (`result.json`):
a resume loads the base and replays the updates bit-for-bit without a forward pass.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from components.compute import engine as ds
from components.compute.engine import is_rank0, world
from components.compute.seeds import seed_for
from components.data.prepare import load_data_tokenizer
from components.errors import ConfigError
from components.es import noise
from components.es.config import ESConfig
from components.es.shaping import SHAPING
from components.io.atomic import atomic_dir
from components.models.config import ModelSpec, ScorerSpec
from components.models.loading import causal_lm, disable_dropout, load_tokenizer, save_pretrained
from components.models.lora import merged, trainable
from components.reward.scoring import load_scorer
from components.rl.driver import EvalSet, RLResult, as_spec, encode_eval_set, encode_prompts, fit, stage_inputs
from components.rl.generation import Actor
from components.rl.rewards import Reward, RewardFn, reward_terms
from components.rl.scoring import scored_rollout
from components.stage import Hooks, Inputs

log = logging.getLogger(__name__)


class ES:
    """The policy, its trainable parameters (every weight, or the LoRA adapters), its reward, and the prompts it
    trains on (token ids, texts, chat messages where known)."""

    def __init__(self, config: ESConfig, lm, tokenizer, reward: Reward, prompts: list[list[int]], texts: list[str],
                 messages: list | None = None):
        self.config, self.lm, self.tokenizer, self.reward = config, lm, tokenizer, reward
        self.prompts, self.texts, self.messages = prompts, texts, messages
        self.actor = Actor(lm, value_head=False)
        self.params = [p.data for p in lm.parameters() if p.requires_grad]
        self.adam = noise.Adam(self.params) if config.optimizer == "adam" else None
        self.checkpoints = Checkpoints(config.checkpoint_every)
        self.iteration = 0

    @torch.no_grad()
    def answer(self, prompts: list[list[int]], texts: list[str], messages: list | None, seed: int):
        """Sample one response per prompt (sampling seeded by `seed`, so every member draws the same random
        numbers) and score it. Returns (weighted scores (n,), per-term scores (n, K), keep (n,), responses)."""
        out, chunk = [], self.config.compute.micro_batch_size
        torch.manual_seed(seed)
        for start in range(0, len(prompts), chunk):
            part = slice(start, start + chunk)
            batch, responses = scored_rollout(self.actor, prompts[part], texts[part], self.reward, self.config.rollout,
                                              self.tokenizer, messages[part] if messages else None,
                                              self.config.compute.precision)
            out.append((batch.scores, batch.term_scores, batch.keep, responses))
        return (torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out]), torch.cat([o[2] for o in out]),
                [r for o in out for r in o[3]])

    def step(self) -> dict[str, float]:
        """Evaluate this rank's members on the iteration's prompts, share the rewards, update. Returns metrics and
        records the members and weights of the update in `self.last`."""
        c, (rank, world_size) = self.config, world()
        t0 = time.perf_counter()
        n, b = len(self.prompts), min(c.batch_size, len(self.prompts))
        order = np.random.default_rng(seed_for(c.seed, self.iteration, 7)).permutation(n)[:b]
        prompts, texts = [self.prompts[i] for i in order], [self.texts[i] for i in order]
        messages = [self.messages[i] for i in order] if self.messages else None
        members = noise.population(c.seed, self.iteration, c.population_size, c.antithetic)
        rewards = torch.zeros(len(members), dtype=torch.float64)
        terms = torch.zeros(len(members), len(self.reward.terms), dtype=torch.float64)
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
                **{f"rewards/{t.name}/mean": terms[:, k].mean().item() for k, t in enumerate(self.reward.terms)},
                "time/evaluate": t1 - t0, "time/update": seconds - (t1 - t0), "time/iteration": seconds,
                "perf/members_per_s": len(members) / seconds}

    def replay(self, entry: dict) -> None:
        """Apply a logged update again (resume): the same members and weights give bit-identical weights."""
        members = [noise.Member(s, g) for s, g in zip(entry["seeds"], entry["signs"])]
        noise.update(self.params, members, entry["weights"], self.config.lr, self.adam)
        self.iteration = entry["iteration"] + 1

    @torch.no_grad()
    def evaluate(self, eval_set: EvalSet) -> tuple[dict[str, float], list[dict]]:
        """The unperturbed policy on held-out prompts, eval_samples each: mean score, gold and length, and rows."""
        rows, texts, gold_fn = [], eval_set.texts, eval_set.gold_fn
        for k in range(self.config.eval_samples):
            scores, _, _, responses = self.answer(eval_set.prompts, texts, eval_set.messages,
                                                  seed_for(self.config.seed, 31, k))
            gold = gold_fn(texts, responses) if gold_fn else [None] * len(responses)
            rows += [{"prompt_index": i, "prompt": texts[i], "response": r, "score": float(s), "gold": g,
                      "length": len(self.tokenizer(r, add_special_tokens=False)["input_ids"])}
                     for i, (r, s, g) in enumerate(zip(responses, scores.tolist(), gold))]
        metrics = {"score_mean": float(np.mean([r["score"] for r in rows])),
                   "length_mean": float(np.mean([r["length"] for r in rows]))}
        if gold_fn is not None:
            metrics["gold_mean"] = float(np.mean([r["gold"] for r in rows]))
        return metrics, rows

    def save_checkpoint(self, directory: Path, extra: dict) -> bool:
        return self.checkpoints.save(Path(directory), self, extra)

    def load_checkpoint(self, directory: Path) -> dict | None:
        return self.checkpoints.resume(Path(directory), self)


class Checkpoints:
    """`base.pt` (trainable weights, Adam moments, iteration) rewritten every `every` iterations (and at iteration
    0), `log.jsonl`, one line per iteration since the base, and `result.json`, the driver's result so far (rank 0
    writes; every rank reads)."""

    def __init__(self, every: int):
        self.every = every

    def save(self, directory: Path, es: ES, extra: dict) -> bool:
        """Checkpoint this iteration; whether anything was written (never without a base to append to)."""
        if not is_rank0():
            return False
        new_base = bool(self.every) and es.iteration % self.every == 0
        if not new_base and not (directory / "base.pt").exists():
            return False
        directory.mkdir(parents=True, exist_ok=True)
        # the result first: a crash before the weights land leaves it ahead, and a resume drops what is ahead
        (directory / "result.tmp").write_text(json.dumps(extra))
        (directory / "result.tmp").replace(directory / "result.json")
        if new_base:  # a new base; the log restarts
            state = {"iteration": es.iteration, "params": es.params,
                     "adam": es.adam.state_dict() if es.adam else None}
            torch.save(state, directory / "base.tmp")
            (directory / "base.tmp").replace(directory / "base.pt")
            (directory / "log.jsonl").write_text("")
        else:
            with open(directory / "log.jsonl", "a") as f:
                f.write(json.dumps(es.last) + "\n")
        return True

    def resume(self, directory: Path, es: ES) -> dict | None:
        """Load the base and replay the log; the saved result, None when there is nothing to resume."""
        if not (directory / "base.pt").exists():
            return None
        state = torch.load(directory / "base.pt", weights_only=True)
        for p, saved in zip(es.params, state["params"]):
            p.copy_(saved)
        if es.adam is not None and state["adam"] is not None:
            es.adam.load_state_dict(state["adam"])
        es.iteration = state["iteration"]
        log_file = directory / "log.jsonl"
        for line in log_file.read_text().splitlines() if log_file.exists() else []:
            entry = json.loads(line)
            if entry["iteration"] == es.iteration:  # a line written before a crash mid-append is skipped
                es.replay(entry)
        result = directory / "result.json"
        return json.loads(result.read_text()) if result.is_file() else {}


def train(prompts: list[str], reward_fn: RewardFn | Sequence[RewardFn] | None = None,
          config: ESConfig | None = None, *, reward_weights: Sequence[float] | None = None,
          model: str | ModelSpec | None = None, reward_model: str | ScorerSpec | None = None, tokenizer=None,
          eval_prompts: list[str] | None = None, gold_fn: RewardFn | None = None, out_dir: str | Path | None = None,
          hooks: Hooks | None = None, prompt_messages: list | None = None,
          eval_messages: list | None = None) -> RLResult:
    """Fine-tune `model` (or config.model) with evolution strategies on `prompts`, rewarded as PPO is (`reward_fn`
    functions and/or a reward model, or config.rewards). With `hooks.checkpoint_dir` a run resumes from what is
    there."""
    config, hooks = config or ESConfig(), hooks or Hooks()
    policy = as_spec(model) or config.model
    scorer_spec = as_spec(reward_model, ScorerSpec) or config.reward_model
    if policy is None:
        raise ConfigError("es.model: no initial policy given")
    terms = reward_terms(config.rewards, reward_fn, reward_weights, has_model=scorer_spec is not None, section="es")
    ds.init_distributed()
    tokenizer = tokenizer or load_tokenizer(policy.name_or_path, field="es.model")
    torch.manual_seed(config.seed)
    lm = trainable(disable_dropout(causal_lm(policy, tokenizer, field="es.model")), config.lora, "CAUSAL_LM")
    lm.eval()
    scorer = None
    if any(t.fn is None for t in terms):
        scorer = load_scorer(scorer_spec, tokenizer, "es.reward_model",
                             lambda m: ds.inference(m, config.compute), config.seed + 2)
    max_positions = lm.config.max_position_embeddings
    encoded = encode_prompts(tokenizer, prompts, config.rollout.max_new_tokens, max_positions)
    held_out = encode_eval_set(tokenizer, eval_prompts or [], config.rollout.max_new_tokens, max_positions,
                               eval_messages, gold_fn)
    es = ES(config, lm, tokenizer, Reward(terms, scorer), encoded, list(prompts), prompt_messages)
    result = fit(es, "es", held_out, hooks)
    if out_dir is not None and is_rank0():
        with atomic_dir(out_dir) as tmp:
            save_pretrained(merged(lm), tokenizer, tmp)
            for name, text in result.files().items():
                (tmp / name).write_text(text)
    if dist.is_initialized():
        dist.barrier()
    return result


def run(config: ESConfig, inputs: Inputs, out: Path, hooks: Hooks) -> dict[str, float]:
    """The pipeline stage, on PPO's inputs: the prompts of preference_train, held-out eval_prompts, the SFT policy
    and (when a term of es.rewards is the reward model) the reward model; writes the policy to `out`."""
    from components.evaluation.gold import load_gold

    policy, scorer, records, evals = stage_inputs(config, inputs, "es")
    return train([r["prompt"] for r in records], config=config, model=policy, reward_model=scorer,
                 tokenizer=load_data_tokenizer(inputs.dirs["data"]), eval_prompts=[r["prompt"] for r in evals],
                 gold_fn=load_gold(inputs.gold), out_dir=out, hooks=hooks,
                 prompt_messages=[r.get("prompt_messages") for r in records],
                 eval_messages=[r.get("prompt_messages") for r in evals]).metrics
