"""PPO entry points: `train(prompts=..., reward_fn=...)` (the trlx-style API) and `run(config, inputs, out, hooks)`
(the pipeline stage, reading data prep's splits, the SFT policy and the reward model)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from components.compute import engine as ds
from components.compute.engine import world
from components.data.prepare import load_data_tokenizer, read_split
from components.errors import ConfigError
from components.models.config import ModelSpec, ScorerSpec
from components.models.loading import load_tokenizer
from components.ppo.config import PPOConfig
from components.ppo.models import build_actor, build_critic, build_reference, merged_policy
from components.ppo.trainer import Models, PPOTrainer
from components.reward.scoring import load_scorer
from components.rl.driver import RLResult, as_spec, encode_eval_set, encode_prompts, fit, stage_inputs
from components.rl.rewards import RewardFn, reward_terms
from components.sft.data import encode
from components.stage import Hooks, Inputs

log = logging.getLogger(__name__)


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


def train(prompts: list[str], reward_fn: RewardFn | Sequence[RewardFn] | None = None,
          config: PPOConfig | None = None, *, reward_weights: Sequence[float] | None = None,
          model: str | ModelSpec | None = None, reward_model: str | ModelSpec | None = None, tokenizer=None,
          eval_prompts: list[str] | None = None, gold_fn: RewardFn | None = None, out_dir: str | Path | None = None,
          hooks: Hooks | None = None, ptx_examples: list[tuple[list[int], list[int]]] | None = None,
          prompt_messages: list | None = None, eval_messages: list | None = None) -> RLResult:
    """Train a policy with PPO (or GRPO, RLOO, REINFORCE++: `config.advantage`) on `prompts`. The reward is a
    weighted sum of terms: `reward_fn(prompts, responses) -> list[float]` (one function or a list, weighted by
    `reward_weights`) and/or a reward model (`reward_model`, a HF sequence-classification dir / hub id); without
    `reward_fn`, `config.rewards` names them. Each term is logged as rewards/<name>/mean. `model` (or config.model)
    is the initial policy. With `out_dir`, the policy is saved there as a HF directory. `hooks` take the metrics,
    samples and checkpoints: with `hooks.checkpoint_dir`, checkpoints go there every config.checkpoint_every
    iterations, and a run finding one there continues from it. `prompt_messages` / `eval_messages` are the prompts
    as chat messages (None where plain text), for a reward model with its own chat template."""
    config, hooks = config or PPOConfig(), hooks or Hooks()
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
    held_out = encode_eval_set(tokenizer, eval_prompts or [], config.rollout.max_new_tokens, max_positions,
                               eval_messages, gold_fn)
    longest = max(map(len, encoded + (held_out.prompts if held_out else [])))
    _check_scorer_context(models.scorer, longest + config.rollout.max_new_tokens)
    trainer = PPOTrainer(config, models, tokenizer, encoded, list(prompts), terms, ptx_examples, prompt_messages)
    result = fit(trainer, "ppo", held_out, hooks)
    if out_dir is not None:
        ds.save_hf(models.actor, tokenizer, out_dir, result.files(), select=merged_policy)
    return result


def run(config: PPOConfig, inputs: Inputs, out: Path, hooks: Hooks) -> dict[str, float]:
    """The pipeline stage: prompts of the preference_train split, held-out eval_prompts, the SFT policy and the
    reward model unless the config names others (the reward stage's output is no input when no term of
    ppo.rewards is the reward model); writes the policy to `out`. Returns the final metrics."""
    from components.evaluation.gold import load_gold

    policy, scorer, records, evals = stage_inputs(config, inputs, "ppo")
    data = inputs.dirs["data"]
    tokenizer = load_data_tokenizer(data)  # the tokenizer every stage of this pipeline trained with
    ptx = None
    if config.ptx_coef:
        ptx = [encode(tokenizer, r["prompt"], r["completion"], inputs.max_length) for r in read_split(data, "sft_train")]
    return train([r["prompt"] for r in records], config=config, model=policy, reward_model=scorer,
                 tokenizer=tokenizer, eval_prompts=[r["prompt"] for r in evals], gold_fn=load_gold(inputs.gold),
                 out_dir=out, hooks=hooks, ptx_examples=ptx, prompt_messages=[r.get("prompt_messages") for r in records],
                 eval_messages=[r.get("prompt_messages") for r in evals]).metrics


def _check_scorer_context(scorer, longest: int) -> None:
    """A reward model sharing the policy's tokens must fit the longest prompt + response (checked before any
    training); one with its own tokenizer keeps the last tokens of longer sequences (counted in the metrics)."""
    if scorer is not None and scorer.same and scorer.max_positions and longest > scorer.max_positions:
        raise ConfigError(f"ppo.reward_model: its context is {scorer.max_positions} tokens, but the longest prompt "
                          f"+ rollout.max_new_tokens is {longest}; shorten data.max_prompt_length or "
                          "ppo.rollout.max_new_tokens")
