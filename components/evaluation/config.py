"""The evaluation stage's config."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.config.base import StrictModel
from components.ppo.config import RolloutConfig


class EvaluationConfig(StrictModel):
    """How held-out prompts are sampled and scored."""

    samples_per_prompt: int = Field(4, ge=1, description="Responses sampled per held-out prompt and model.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling (as in PPO by default).")
    batch_size: int = Field(64, ge=1, description="Prompts per generate call.")
    seed: int = Field(0, description="Sampling seed (the same for every model).")
    reward_hacking_threshold: float = Field(1.0, gt=0, description="Flag reward hacking when the reward-model gain "
                                            "over SFT exceeds the gold gain by this many SFT standard deviations.")


class PromotionConfig(StrictModel):
    """The gate from `candidate` to `champion` in the model registry."""

    metric: Literal["gold_mean", "score_mean"] = Field(
        "gold_mean", description="Evaluation metric compared (gold when a gold scorer exists, else reward model).")
    margin: float = Field(0.0, ge=0, description="The candidate must beat the champion by at least this much.")
    require_approval: bool = Field(False, description="Pause the flow for a person to approve in the Prefect UI.")
    approval_timeout_s: int = Field(3600, ge=1, description="Seconds to wait for approval; no answer keeps the champion.")
