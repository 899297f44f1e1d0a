"""The reward-model stage's config."""
from __future__ import annotations

from pydantic import Field

from components.compute.config import ComputeConfig
from components.config.base import StrictModel
from components.models.config import ModelSpec


class RewardConfig(StrictModel):
    """Fit r(x, y) so that sigmoid(r(x, chosen) - r(x, rejected) - margin) is the preference probability."""

    model: ModelSpec | None = Field(None, description="Backbone; default: the SFT stage's output model.")
    compute: ComputeConfig = Field(default_factory=ComputeConfig, description="DeepSpeed settings.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps, then cosine decay to 10% of lr.")
    epochs: int = Field(2, ge=1, description="Passes over the preference pairs.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    margin: float = Field(0.0, ge=0, description="Margin m in -logsigmoid(r_chosen - r_rejected - m).")
    eval_every: int = Field(50, ge=1, description="Evaluate held-out accuracy every N optimizer steps.")
    log_every: int = Field(10, ge=1, description="Report training metrics every N optimizer steps.")
    seed: int = Field(0, description="Seed for head init, shuffling and dropout.")
