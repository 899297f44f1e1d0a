"""The reward-model stage's config."""
from __future__ import annotations

from pydantic import Field

from components.compute.config import TrainingConfig
from components.models.config import ModelSpec


class RewardConfig(TrainingConfig):
    """Fit r(x, y) so that sigmoid(r(x, chosen) - r(x, rejected) - margin) is the preference probability."""

    model: ModelSpec | None = Field(None, description="Backbone; default: the SFT stage's output model.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (AdamW).")
    margin: float = Field(0.0, ge=0, description="Margin m in -logsigmoid(r_chosen - r_rejected - m).")
    feedback: list[str] = Field(default_factory=list, description="Stored human-feedback datasets (URIs of stage "
                                "`feedback` outputs) added to the training pairs; their fingerprints join the cache key.")
