"""The on-policy driver every RL stage shares (PPO and its critic-free estimators, ES): what a stage trains on in the
pipeline, prompt encoding, and `fit`, the loop around a trainer's `step()` with periodic held-out evaluations (win
rate against the initial policy), history, checkpoints and resume, ending in an `RLResult` whose files every RL
stage writes beside its policy."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from components.compute.engine import is_rank0
from components.compute.loop import metrics_file, reproducible
from components.data.prepare import read_split
from components.errors import ConfigError, DataError
from components.evaluation.metrics import held_out, per_prompt_means, win_rate
from components.models.config import ModelSpec, ScorerSpec
from components.rl.rewards import RewardFn
from components.stage import Hooks, Inputs

log = logging.getLogger(__name__)


@dataclass
class RLResult:
    """What an RL stage's training returns (and checkpoints, so a resumed run returns the same)."""

    metrics: dict[str, float] = field(default_factory=dict)  # the last iteration's metrics and the final eval/*
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per iteration (and evaluation)
    eval_rows: list[dict] = field(default_factory=list)  # the last evaluation's samples
    eval_before_rows: list[dict] = field(default_factory=list)  # the initial policy's samples

    def files(self) -> dict[str, str]:
        """The files an RL stage writes beside its policy: metrics.json, history.jsonl, eval_samples.jsonl."""
        return {"metrics.json": metrics_file(self.metrics),
                "history.jsonl": "".join(json.dumps(reproducible(h)) + "\n" for h in self.history),
                "eval_samples.jsonl": "".join(json.dumps(r) + "\n" for r in self.eval_rows)}


@dataclass
class EvalSet:
    """The held-out prompts a policy is evaluated on, encoded, and the gold scorer of its samples."""

    prompts: list[list[int]]
    texts: list[str]
    messages: list | None = None  # the prompts as chat messages where known
    gold_fn: RewardFn | None = None


class OnPolicyTrainer(Protocol):
    """What `fit` drives: a trainer whose `config` has iterations, eval_every and log_every."""

    config: object
    iteration: int  # iterations done

    def step(self) -> dict[str, float]:
        """One iteration (sample, score, update); its metrics."""

    def evaluate(self, eval_set: EvalSet) -> tuple[dict[str, float], list[dict]]:
        """Held-out metrics (score_mean, gold_mean, ...) and one row per sample."""

    def save_checkpoint(self, directory: Path, extra: dict) -> bool:
        """Checkpoint this iteration if its schedule says so, with `extra` (plain data); whether it did."""

    def load_checkpoint(self, directory: Path) -> dict | None:
        """Restore the latest checkpoint in `directory`; the `extra` saved with it, None when there is none."""


def fit(trainer: OnPolicyTrainer, name: str, eval_set: EvalSet | None, hooks: Hooks) -> RLResult:
    """Iterate to config.iterations: log every iteration through `hooks.log` (the console every log_every-th),
    evaluate on `eval_set` at iteration 0 (the initial policy, `eval/initial/*`), every eval_every iterations and at
    the end, and checkpoint into hooks.checkpoint_dir as the trainer's schedule says. A checkpoint found there is
    resumed, with the history and evaluations it holds, so a resumed run returns what an uninterrupted one does."""
    c, directory = trainer.config, hooks.checkpoint_dir
    resumed = trainer.load_checkpoint(directory) if directory else None
    result = RLResult(**(resumed or {}))
    if resumed is not None:  # what was logged after the checkpoint is done again
        result.history = [h for h in result.history if h["iteration"] <= trainer.iteration]
        log.info("%s resumed at iteration %d from %s", name, trainer.iteration, directory)

    def report(metrics: dict[str, float], show: bool = True) -> None:
        result.history.append({"iteration": trainer.iteration, **metrics})
        if is_rank0():
            if show:
                shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                 if math.isfinite(v) and not k.startswith(("time/", "perf/")))
                log.info("%s iteration %d/%d %s", name, trainer.iteration, c.iterations, shown)
            hooks.log(trainer.iteration, metrics)

    def evaluate() -> None:
        metrics, result.eval_rows = trainer.evaluate(eval_set)
        if result.eval_before_rows:  # per prompt, by the mean over its samples
            key = "gold" if eval_set.gold_fn is not None else "score"
            metrics[f"{key}_win_rate_vs_initial"] = win_rate(per_prompt_means(result.eval_rows, key),
                                                             per_prompt_means(result.eval_before_rows, key))
        named = {held_out(k): v for k, v in metrics.items()}
        result.metrics.update(named)
        report(named)
        if is_rank0():
            hooks.on_samples(trainer.iteration, result.eval_rows)

    def checkpoint() -> None:
        if directory and trainer.save_checkpoint(directory, asdict(result)) and is_rank0():
            hooks.checkpointed()

    if trainer.iteration == 0:
        if eval_set:
            evaluate()
            result.metrics = {held_out(k.removeprefix(held_out("")), "initial"): v for k, v in result.metrics.items()}
            result.eval_before_rows = result.eval_rows
        checkpoint()
    while trainer.iteration < c.iterations:
        stats = trainer.step()
        result.metrics.update(stats)
        it = trainer.iteration
        report(stats, show=it % c.log_every == 0 or it == c.iterations)
        if eval_set and (it % c.eval_every == 0 or it == c.iterations):
            evaluate()
        checkpoint()
    return result


def encode_prompts(tokenizer, texts: list[str], max_new_tokens: int, max_positions: int,
                   source: str = "prompts") -> list[list[int]]:
    """Token ids of each prompt; an empty set, an empty prompt or one that leaves no room for the response in
    the model's context is an error naming the prompt."""
    if not texts:
        raise DataError(source, "no prompts to train on")
    encoded = []
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise DataError(source, f"prompt {i} is empty", line=i + 1)
        if len(ids) + max_new_tokens > max_positions:
            raise DataError(source, f"prompt {i} has {len(ids)} tokens; with rollout.max_new_tokens="
                                    f"{max_new_tokens} that exceeds the model's context of {max_positions}", line=i + 1)
        encoded.append(ids)
    return encoded


def encode_eval_set(tokenizer, texts: list[str], max_new_tokens: int, max_positions: int, messages: list | None = None,
             gold_fn: RewardFn | None = None) -> EvalSet | None:
    """The held-out prompts encoded (None when there are none)."""
    if not texts:
        return None
    return EvalSet(encode_prompts(tokenizer, texts, max_new_tokens, max_positions, "eval_prompts"), list(texts),
                   messages, gold_fn)


def stage_inputs(config, inputs: Inputs, stage: str) -> tuple[ModelSpec, ScorerSpec | None, list[dict], list[dict]]:
    """What an RL stage (ppo, es) trains on in the pipeline: the initial policy (config.model, else the SFT output),
    the scorer (config.reward_model, else the reward stage's; None when no reward term is the reward model), the
    distinct prompts of data prep's preference_train and its held-out eval_prompts."""
    policy_dir, reward_dir, data_dir = inputs.dirs.get("sft"), inputs.dirs.get("reward"), inputs.dirs["data"]
    policy = config.model or (ModelSpec(name_or_path=str(policy_dir)) if policy_dir else None)
    scorer = config.reward_model or (ScorerSpec(name_or_path=str(reward_dir)) if reward_dir else None)
    if policy is None:
        raise ConfigError(f"{stage}.model: not set and no SFT model was given")
    records = list({r["prompt"]: r for r in read_split(data_dir, "preference_train")}.values())
    return policy, scorer if config.uses_reward_model else None, records, read_split(data_dir, "eval_prompts")


def as_spec(model: str | Path | ModelSpec | None, kind: type[ModelSpec] = ModelSpec) -> ModelSpec | None:
    """A model given as a path or hub id, as a spec of `kind`."""
    return kind(name_or_path=str(model)) if isinstance(model, (str, Path)) else model
