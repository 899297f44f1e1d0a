"""The PPO stage's config: rollout sampling, the KL penalty, the actor-critic layout, PPO's update schedule."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.compute.config import ComputeConfig
from components.config.base import StrictModel
from components.models.config import ModelSpec
from components.models.lora import LoRAConfig
from components.rl.config import RewardedPolicyConfig, RolloutConfig


class KLConfig(StrictModel):
    """The penalty that keeps the policy near the reference model."""

    coef: float = Field(0.05, ge=0, description="Initial KL coefficient beta.")
    adaptive: bool = Field(False, description="Adapt beta towards `target` (Ziegler et al. 2019) instead of fixing it.")
    target: float = Field(6.0, gt=0, description="Target KL per sequence (nats) for the adaptive controller.")
    horizon: int = Field(10000, ge=1, description="Adaptive controller horizon in samples.")
    estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator (Schulman 2020).")
    in_reward: bool = Field(True, description="Subtract beta*KL from each token's reward (InstructGPT); false adds "
                                              "beta*KL to the policy loss instead.")


class PPOConfig(RewardedPolicyConfig):
    """PPO with a KL penalty against a frozen reference (Ouyang et al. 2022), on DeepSpeed engines."""

    critic: Literal["value_head", "separate"] = Field(
        "value_head", description="Value head on the policy trunk, or a separate critic model with its own backbone.")
    critic_model: ModelSpec | None = Field(None, description="Separate critic's initial weights; default: the policy's.")
    lora: LoRAConfig | None = Field(None, description="Train LoRA adapters on the policy (null: full fine-tuning).")
    compute: ComputeConfig = Field(default_factory=lambda: ComputeConfig(micro_batch_size=8),
                                   description="DeepSpeed settings of the actor (and critic). A micro_batch_size at "
                                               "or above the per-process minibatch runs each minibatch in one pass.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Response sampling.")
    kl: KLConfig = Field(default_factory=KLConfig, description="KL penalty to the reference model.")
    iterations: int = Field(30, ge=1, description="Rollout-then-update iterations.")
    batch_size: int = Field(32, ge=1, description="Prompts per iteration (over all processes).")
    ppo_epochs: int = Field(4, ge=1, description="Passes over each rollout batch.")
    num_minibatches: int = Field(4, ge=1, description="Optimizer steps per pass (minibatch = batch_size / this).")
    lr: float = Field(1e-5, gt=0, description="Actor learning rate (AdamW, linear warmup then constant).")
    critic_lr: float | None = Field(None, gt=0, description="Separate critic's learning rate; default: lr.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup in optimizer steps.")
    advantage: Literal["gae", "grpo", "rloo", "reinforce_pp"] = Field(
        "gae", description="Advantage estimator: gae (PPO with a critic), grpo (group mean/std baseline), rloo "
                           "(leave-one-out baseline), reinforce_pp (batch-whitened returns); all but gae train no "
                           "critic.")
    num_generations: int = Field(1, ge=1, description="Responses sampled per prompt (a group); grpo and rloo need >= 2.")
    scale_rewards: bool = Field(True, description="grpo: divide by the group's reward std (false: Dr. GRPO).")
    loss_aggregation: Literal["token_mean", "sequence_mean", "constant"] = Field(
        "token_mean", description="Policy loss over a minibatch: mean over tokens (PPO, DAPO), mean of per-sequence "
                                  "token means (GRPO), or token sums / (sequences x max_new_tokens) (Dr. GRPO).")
    clip_eps: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    clip_eps_high: float | None = Field(None, gt=0, description="Upper ratio clip (DAPO's clip-higher); null: clip_eps.")
    vf_clip: float | None = Field(0.2, gt=0, description="Value clipping range around the rollout values; null: off.")
    vf_coef: float = Field(0.1, ge=0, description="Value loss weight (value-head layout: both share one loss).")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    whiten_advantages: bool = Field(True, description="Normalise advantages over the rollout batch.")
    reward_normalize: bool = Field(False, description="Normalise scores by their running mean and std.")
    reward_clip: float | None = Field(10.0, gt=0, description="Clip (normalised) scores to +-this; null: off.")
    missing_eos_penalty: float | None = Field(None, ge=0, description="Subtract from the score of a response that "
                                                                      "never emitted EOS; null: off.")
    nonfinite_rewards: Literal["error", "skip"] = Field("error", description="On a NaN/inf score: stop with an "
                                                                             "error, or drop that sample (counted).")
    ptx_coef: float = Field(0.0, ge=0, description="Weight of an auxiliary SFT loss on SFT data (InstructGPT's ptx).")
    checkpoint_every: int = Field(25, ge=0, description="Save a resumable checkpoint every N iterations (in the "
                                  "artifact store, under the stage's `_partial/`, removed once the stage's output is "
                                  "stored); a rerun resumes from it. 0: never.")
    eval_every: int = Field(10, ge=1, description="Score held-out prompts every N iterations.")
    eval_samples: int = Field(1, ge=1, description="Responses sampled per held-out prompt at each evaluation.")
    log_every: int = Field(1, ge=1, description="Print training metrics every N iterations (the tracker gets every one).")
    seed: int = Field(0, description="Seed of sampling, shuffles and new heads.")

    @model_validator(mode="after")
    def _batch_shape(self) -> "PPOConfig":
        if self.advantage in ("grpo", "rloo") and self.num_generations < 2:
            raise ValueError(f"advantage {self.advantage} compares samples of a prompt: num_generations must be >= 2")
        if self.advantage != "gae" and self.critic == "separate":
            raise ValueError(f"advantage {self.advantage} trains no critic; critic: separate needs advantage: gae")
        samples = self.batch_size * self.num_generations
        if samples % self.num_minibatches:
            raise ValueError(f"batch_size x num_generations = {samples} is not divisible by num_minibatches "
                             f"{self.num_minibatches}")
        minibatch = samples // self.num_minibatches
        if minibatch % self.num_generations:
            raise ValueError(f"a minibatch of {minibatch} samples would split groups of num_generations="
                             f"{self.num_generations}: make batch_size ({self.batch_size}) a multiple of "
                             f"num_minibatches ({self.num_minibatches})")
        if minibatch % self.compute.micro_batch_size and self.compute.micro_batch_size < minibatch:
            raise ValueError(f"minibatch {minibatch} (batch_size / num_minibatches) is not divisible by "
                             f"compute.micro_batch_size {self.compute.micro_batch_size}")
        if self.compute.gradient_accumulation_steps != 1:
            raise ValueError("compute.gradient_accumulation_steps: PPO derives accumulation from the minibatch "
                             "(batch_size / num_minibatches / micro_batch_size / processes); leave it at 1")
        if self.critic_model is not None and self.critic != "separate":
            raise ValueError("critic_model is set but critic is 'value_head'; set critic: separate")
        return self

    @property
    def minibatch_size(self) -> int:
        """Samples per minibatch: batch_size prompts x num_generations, over num_minibatches."""
        return self.batch_size * self.num_generations // self.num_minibatches

    @property
    def algorithm(self) -> str:
        """What this stage trains with, as users name it: ppo (with GAE), grpo, rloo or reinforce_pp."""
        return "ppo" if self.advantage == "gae" else self.advantage

    @property
    def uses_reference(self) -> bool:
        """Whether a frozen reference is needed: only for a KL penalty (kl.coef 0 loads none)."""
        return self.kl.coef > 0

    @property
    def uses_critic(self) -> bool:
        return self.advantage == "gae"
