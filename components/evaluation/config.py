"""The evaluation stage's config."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from components.config.base import StrictModel
from components.config.functions import importable
from components.rl.config import RolloutConfig


class EvaluationConfig(StrictModel):
    """How held-out prompts are sampled and scored."""

    samples_per_prompt: int = Field(4, ge=1, description="Responses sampled per held-out prompt and model.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling (as in PPO by default).")
    batch_size: int = Field(64, ge=1, description="Prompts per generate call.")
    seed: int = Field(0, description="Sampling seed (the same for every model).")
    reward_hacking_threshold: float = Field(1.0, gt=0, description="Flag reward hacking when the reward-model gain "
                                            "over SFT exceeds the gold gain by this many SFT standard deviations.")
    gold_fn: str | None = Field(None, description="Your gold scorer as module:function, called fn(prompts, responses) "
                                "-> list of floats (PPO's held-out evaluations and this stage); default: the demo's "
                                "scorer with data.source=demo, else none.")

    @field_validator("gold_fn")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        return importable(value, "evaluate.gold_fn")


class PromotionConfig(StrictModel):
    """The gate from `candidate` to `champion` in the model registry."""

    metric: Literal["auto", "gold_mean", "score_mean"] = Field(
        "auto", description="Evaluation metric compared: gold_mean (needs a gold scorer), score_mean (the reward "
                            "model's), or auto: gold_mean when a gold scorer exists, else score_mean.")
    margin: float = Field(0.0, ge=0, description="The candidate must beat the champion by at least this much.")
    require_beating_sft: bool = Field(True, description="Promote only a candidate that beats the SFT model (by "
                                      "sft_margin and min_win_rate_vs_sft); false compares with the champion alone.")
    sft_margin: float = Field(0.0, ge=0, description="The candidate's metric must exceed the SFT model's by more "
                              "than this (a policy no better than its starting point is never promoted).")
    min_win_rate_vs_sft: float = Field(0.5, ge=0, le=1, description="The candidate must win at least this fraction "
                                       "of held-out prompts against SFT (by the same metric; ties count half).")
    require_approval: bool = Field(False, description="Pause the flow for a person to approve in the Prefect UI.")
    approval_timeout_s: int = Field(3600, ge=1, description="Seconds to wait for approval; no answer keeps the champion.")
