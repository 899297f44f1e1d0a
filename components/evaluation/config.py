"""The evaluation stage's config."""
from __future__ import annotations

from pydantic import Field

from components.config.base import StrictModel
from components.ppo.config import RolloutConfig


class EvaluationConfig(StrictModel):
    """How held-out prompts are sampled and scored."""

    samples_per_prompt: int = Field(4, ge=1, description="Responses sampled per held-out prompt and model.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling (as in PPO by default).")
    batch_size: int = Field(64, ge=1, description="Prompts per generate call.")
    seed: int = Field(0, description="Sampling seed (the same for every model).")
