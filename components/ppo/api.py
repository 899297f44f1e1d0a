"""PPO entry points: `train(prompts=..., reward_fn=...)` (the trlx-style API) and `run(...)` (the pipeline stage,
reading data prep's splits, the SFT policy and the reward model)."""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.compute import engine as ds
from components.compute.engine import is_rank0, world
from components.compute.loop import LogFn, metrics_file, reproducible
from components.data.prepare import load_data_tokenizer, read_split
from components.errors import ConfigError, DataError
from components.evaluation.metrics import held_out, per_prompt_means, win_rate
from components.models.config import ModelSpec, ScorerSpec
from components.models.loading import load_tokenizer
from components.ppo.config import PPOConfig
from components.ppo.models import build_actor, build_critic, build_reference, merged_policy
from components.ppo.rewards import RewardFn, reward_terms
from components.ppo.trainer import Models, PPOTrainer
from components.reward.scoring import load_scorer
from components.sft.data import encode

log = logging.getLogger(__name__)


@dataclass
class PPOResult:
    metrics: dict[str, float]  # the last iteration's training metrics and the final eval/* metrics
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per iteration (and eval)
    eval_rows: list[dict] = field(default_factory=list)  # the final evaluation's samples
    eval_before_rows: list[dict] = field(default_factory=list)  # the initial policy's samples (fresh runs only)


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


def build_models(config: PPOConfig, tokenizer, policy: ModelSpec, reward: ScorerSpec | None) -> Models:
    """Actor (and critic) DeepSpeed engines; frozen reference (none without a KL penalty) and scorer (ZeRO-3
    sharded when configured; `reward` None loads none)."""
    ds.init_distributed()
    _, world_size = world()
    per_rank = config.minibatch_size // world_size
    if per_rank == 0 or config.minibatch_size % world_size:
        raise ConfigError(f"ppo minibatch {config.minibatch_size} cannot be split over {world_size} processes")
    micro = min(config.compute.micro_batch_size, per_rank)
    compute = config.compute.model_copy(update={"micro_batch_size": micro,
                                                "gradient_accumulation_steps": per_rank // micro})
    steps = config.iterations * config.ppo_epochs * config.num_minibatches

    def engine(model, lr):
        return ds.initialize(model, ds.ds_config(compute, lr, config.weight_decay, config.warmup_steps, steps,
                                                 schedule="constant"))

    value_head = config.uses_critic and config.critic == "value_head"  # critic-free estimators train no value model
    actor = build_actor(policy, tokenizer, value_head, config.lora, config.seed, config.compute.gradient_checkpointing)
    reference = build_reference(actor, config.lora) if config.uses_reference else None
    actor = engine(actor, config.lr)
    critic = None
    if config.critic == "separate":
        critic = engine(build_critic(config.critic_model or policy, tokenizer, config.seed), config.critic_lr or config.lr)
    scorer = None
    if reward is not None:
        scorer = load_scorer(reward, tokenizer, "ppo.reward_model", lambda m: ds.inference(m, compute), config.seed + 2)
    return Models(actor=actor, critic=critic,
                  reference=ds.inference(reference, compute) if reference is not None else None, scorer=scorer)


def fit(trainer: PPOTrainer, eval_prompts: list[list[int]], eval_texts: list[str], gold_fn: RewardFn | None,
        on_log: LogFn | None, checkpoint_dir: str | Path | None,
        on_samples: Callable[[int, list[dict]], None] | None = None, eval_messages: list | None = None,
        on_checkpoint: Callable[[], None] | None = None, resumed: dict | None = None) -> PPOResult:
    """Iterate to config.iterations with periodic logging, evaluation and checkpoints. `on_samples(iteration,
    rows)` receives each evaluation's samples and `on_checkpoint()` each completed checkpoint (rank 0). A
    checkpoint holds the history and evaluations so far (`resumed`, as loaded), so a resumed run returns, and
    saves, what an uninterrupted one does."""
    c = trainer.config
    result = PPOResult(**(resumed or {"metrics": {}}))
    history = result.history

    def report(step: int, metrics: dict[str, float], show: bool = True) -> None:
        """Every iteration goes to history and on_log (the tracker); every log_every-th to the console."""
        history.append({"iteration": step, **metrics})
        if is_rank0():
            if show:
                shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                 if math.isfinite(v) and not k.startswith(("time/", "perf/")))
                log.info("ppo iteration %d/%d %s", step, c.iterations, shown)
            if on_log is not None:
                on_log(step, metrics)

    def evaluate() -> None:
        metrics, result.eval_rows = trainer.evaluate(eval_prompts, eval_texts, gold_fn, c.eval_samples, eval_messages)
        if result.eval_before_rows:  # per prompt, by the mean over its samples
            key = "gold" if gold_fn is not None else "score"
            metrics[f"{key}_win_rate_vs_initial"] = win_rate(per_prompt_means(result.eval_rows, key),
                                                             per_prompt_means(result.eval_before_rows, key))
        named = {held_out(k): v for k, v in metrics.items()}
        result.metrics.update(named)
        report(trainer.iteration, named)
        if on_samples is not None and is_rank0():
            on_samples(trainer.iteration, result.eval_rows)

    if trainer.iteration == 0 and eval_prompts:
        evaluate()
        result.metrics = {held_out(k.removeprefix(held_out("")), "initial"): v for k, v in result.metrics.items()}
        result.eval_before_rows = result.eval_rows
    while trainer.iteration < c.iterations:
        stats = trainer.step()
        result.metrics.update(stats)
        it = trainer.iteration
        report(it, stats, show=it % c.log_every == 0 or it == c.iterations)
        if eval_prompts and (it % c.eval_every == 0 or it == c.iterations):
            evaluate()
        if checkpoint_dir and c.checkpoint_every and it % c.checkpoint_every == 0:
            trainer.save_checkpoint(checkpoint_dir, asdict(result))
            if on_checkpoint is not None and is_rank0():
                on_checkpoint()
    return result


def train(prompts: list[str], reward_fn: RewardFn | Sequence[RewardFn] | None = None,
          config: PPOConfig | None = None, *, reward_weights: Sequence[float] | None = None,
          model: str | ModelSpec | None = None, reward_model: str | ModelSpec | None = None, tokenizer=None,
          eval_prompts: list[str] | None = None, gold_fn: RewardFn | None = None, out_dir: str | Path | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False, on_log: LogFn | None = None,
          ptx_examples: list[tuple[list[int], list[int]]] | None = None,
          on_samples: Callable[[int, list[dict]], None] | None = None,
          prompt_messages: list | None = None, eval_messages: list | None = None,
          on_checkpoint: Callable[[], None] | None = None) -> PPOResult:
    """Train a policy with PPO (or GRPO, RLOO, REINFORCE++: `config.advantage`) on `prompts`. The reward is a
    weighted sum of terms: `reward_fn(prompts, responses) -> list[float]` (one function or a list, weighted by
    `reward_weights`) and/or a reward model (`reward_model`, a HF sequence-classification dir / hub id); without
    `reward_fn`, `config.rewards` names them. Each term is logged as rewards/<name>/mean. `model` (or config.model)
    is the initial policy. With `out_dir`, the policy is saved there as a HF directory; with `checkpoint_dir`,
    checkpoints go there every config.checkpoint_every iterations and `resume=True` continues from the last.
    `prompt_messages` / `eval_messages` are the prompts as chat messages (None where plain text), for a reward
    model with its own chat template."""
    config = config or PPOConfig()
    policy = as_spec(model) or config.model
    scorer = as_spec(reward_model, ScorerSpec) or config.reward_model
    if policy is None:
        raise ConfigError("ppo.model: no initial policy given")
    terms = reward_terms(config.rewards, reward_fn, reward_weights, has_model=scorer is not None)
    scorer = scorer if any(t.fn is None for t in terms) else None
    tokenizer = tokenizer or load_tokenizer(policy.name_or_path, field="ppo.model")
    models = build_models(config, tokenizer, policy, scorer)
    max_positions = models.actor.module.lm.config.max_position_embeddings
    encoded = encode_prompts(tokenizer, prompts, config.rollout.max_new_tokens, max_positions)
    eval_encoded = encode_prompts(tokenizer, eval_prompts, config.rollout.max_new_tokens, max_positions,
                                  "eval_prompts") if eval_prompts else []
    _check_scorer_context(models.scorer, max(map(len, encoded + eval_encoded)) + config.rollout.max_new_tokens)
    trainer = PPOTrainer(config, models, tokenizer, encoded, list(prompts), terms, ptx_examples, prompt_messages)
    resumed = None
    if resume and checkpoint_dir and Path(checkpoint_dir, "actor", "latest").exists():
        resumed = trainer.load_checkpoint(checkpoint_dir) or None
        log.info("ppo resumed at iteration %d from %s", trainer.iteration, checkpoint_dir)
    result = fit(trainer, eval_encoded, list(eval_prompts or []), gold_fn, on_log, checkpoint_dir, on_samples,
                 eval_messages, on_checkpoint, resumed)
    if out_dir is not None:
        files = {"metrics.json": metrics_file(result.metrics),
                 "history.jsonl": "".join(json.dumps(reproducible(h)) + "\n" for h in result.history),
                 "eval_samples.jsonl": "".join(json.dumps(r) + "\n" for r in result.eval_rows)}
        ds.save_hf(models.actor, tokenizer, out_dir, files, select=merged_policy)
    return result


def run(config: PPOConfig, data_dir: str | Path, out_dir: str | Path, policy_dir: str | Path | None,
        reward_dir: str | Path | None, max_length: int, gold_fn: RewardFn | None = None,
        checkpoint_dir: str | Path | None = None, resume: bool = False, on_log: LogFn | None = None,
        on_samples: Callable[[int, list[dict]], None] | None = None,
        on_checkpoint: Callable[[], None] | None = None) -> PPOResult:
    """The pipeline stage: prompts of the preference_train split, held-out eval_prompts, the SFT policy and the
    reward model unless the config names others (`reward_dir` may be None when no term of ppo.rewards is the
    reward model); writes the policy to `out_dir`."""
    policy, scorer, records, evals = stage_inputs(config, data_dir, policy_dir, reward_dir, "ppo")
    tokenizer = load_data_tokenizer(data_dir)  # the tokenizer every stage of this pipeline trained with
    ptx = None
    if config.ptx_coef:
        ptx = [encode(tokenizer, r["prompt"], r["completion"], max_length) for r in read_split(data_dir, "sft_train")]
    return train([r["prompt"] for r in records], config=config, model=policy, reward_model=scorer,
                 tokenizer=tokenizer, eval_prompts=[r["prompt"] for r in evals], gold_fn=gold_fn, out_dir=out_dir,
                 checkpoint_dir=checkpoint_dir, resume=resume, on_log=on_log, ptx_examples=ptx, on_samples=on_samples,
                 prompt_messages=[r.get("prompt_messages") for r in records],
                 eval_messages=[r.get("prompt_messages") for r in evals], on_checkpoint=on_checkpoint)


def stage_inputs(config, data_dir: str | Path, policy_dir: str | Path | None, reward_dir: str | Path | None,
                 stage: str) -> tuple[ModelSpec, ScorerSpec | None, list[dict], list[dict]]:
    """What an RL stage (ppo, es) trains on in the pipeline: the initial policy (config.model, else the SFT output),
    the scorer (config.reward_model, else the reward stage's; None when no reward term is the reward model), the
    distinct prompts of preference_train and the held-out eval_prompts."""
    policy = config.model or (ModelSpec(name_or_path=str(policy_dir)) if policy_dir else None)
    scorer = config.reward_model or (ScorerSpec(name_or_path=str(reward_dir)) if reward_dir else None)
    if policy is None:
        raise ConfigError(f"{stage}.model: not set and no SFT model was given")
    records = list({r["prompt"]: r for r in read_split(data_dir, "preference_train")}.values())
    return policy, scorer if config.uses_reward_model else None, records, read_split(data_dir, "eval_prompts")


def _check_scorer_context(scorer, longest: int) -> None:
    """A reward model sharing the policy's tokens must fit the longest prompt + response (checked before any
    training); one with its own tokenizer keeps the last tokens of longer sequences (counted in the metrics)."""
    if scorer is not None and scorer.same and scorer.max_positions and longest > scorer.max_positions:
        raise ConfigError(f"ppo.reward_model: its context is {scorer.max_positions} tokens, but the longest prompt "
                          f"+ rollout.max_new_tokens is {longest}; shorten data.max_prompt_length or "
                          "ppo.rollout.max_new_tokens")


def as_spec(model: str | ModelSpec | None, kind: type[ModelSpec] = ModelSpec) -> ModelSpec | None:
    """A model argument of the training APIs as a spec: a path or hub id wrapped, a spec (or None) as it is."""
    return kind(name_or_path=str(model)) if isinstance(model, (str, Path)) else model
