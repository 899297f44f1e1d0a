"""The ES stage's config: the population, its noise and shaping, the update, and what scores a member."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.compute.config import ComputeConfig
from components.models.lora import LoRAConfig
from components.rl.config import RewardedPolicyConfig, RolloutConfig


class ESConfig(RewardedPolicyConfig):
    """Evolution strategies: N perturbations theta + sigma * eps_n of the policy, each scored on the same prompts,
    then theta += lr * mean(shaped_n * eps_n). No gradients, optimizer state (unless adam), critic or reference."""

    lora: LoRAConfig | None = Field(None, description="Perturb and update only LoRA adapters (null: every weight).")
    compute: ComputeConfig = Field(default_factory=lambda: ComputeConfig(micro_batch_size=64),
                                   description="micro_batch_size: prompts per generate call; precision: of the frozen "
                                               "reward model (members are sharded over ranks, placement.es.num_processes; "
                                               "only seeds and rewards travel).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="How each member answers the prompts "
                                   "(every member samples with the same seeds: common random numbers).")
    population_size: int = Field(16, ge=2, description="Perturbations evaluated per iteration.")
    antithetic: bool = Field(True, description="Pair each perturbation with its negative (population_size even).")
    sigma: float = Field(1e-3, gt=0, description="Noise scale of the perturbations.")
    lr: float = Field(5e-4, gt=0, description="Step size alpha of theta += alpha * mean(shaped_n * eps_n).")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="Plain steps, or Adam on the ES gradient estimate.")
    shaping: Literal["zscore", "centered_rank"] = Field(
        "zscore", description="Rewards -> weights: z-scores (Qiu et al.) or centered ranks in [-0.5, 0.5] "
                              "(Salimans et al.).")
    iterations: int = Field(50, ge=1, description="Population evaluations and updates.")
    batch_size: int = Field(32, ge=1, description="Prompts every member answers per iteration.")
    checkpoint_every: int = Field(10, ge=0, description="Rewrite the checkpoint's base weights every N iterations "
                                  "(each iteration in between only appends its seeds and weights); 0: never.")
    eval_every: int = Field(10, ge=1, description="Score held-out prompts every N iterations.")
    eval_samples: int = Field(1, ge=1, description="Responses sampled per held-out prompt at each evaluation.")
    log_every: int = Field(5, ge=1, description="Print metrics every N iterations (the tracker gets every one).")
    seed: int = Field(0, description="Seed of the noise, the prompt order and sampling.")

    @model_validator(mode="after")
    def _population(self) -> "ESConfig":
        if self.antithetic and self.population_size % 2:
            raise ValueError(f"antithetic pairs need an even population_size, got {self.population_size}")
        return self
