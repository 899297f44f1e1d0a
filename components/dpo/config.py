"""The DPO stage's config (TRL's DPOConfig names: beta, loss_type, label_smoothing, rpo_alpha)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.compute.config import TrainingConfig
from components.models.config import ModelSpec


class DPOConfig(TrainingConfig):
    """Train the policy on preference pairs against the frozen SFT model (Rafailov et al. 2023)."""

    model: ModelSpec | None = Field(None, description="Initial policy and reference; default: the SFT stage's output.")
    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL constraint to the reference "
                        "(higher: stay closer).")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="sigmoid (DPO), ipo (Azar et al. 2023), hinge (SLiC), robust (unbiased under label "
                               "noise, Chowdhury et al. 2024).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Assumed fraction of flipped labels (sigmoid: "
                                   "cDPO, robust: its eps).")
    rpo_alpha: float | None = Field(None, gt=0, description="Add this times the chosen response's NLL (RPO); "
                                    "null: off.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate (AdamW).")
    feedback: list[str] = Field(default_factory=list, description="Stored human-feedback datasets (URIs of stage "
                                "`feedback` outputs) added to the training pairs, as for the reward model.")

    @model_validator(mode="after")
    def _smoothing_applies(self) -> "DPOConfig":
        if self.label_smoothing and self.loss_type not in ("sigmoid", "robust"):
            raise ValueError(f"label_smoothing applies to loss_type sigmoid or robust, not {self.loss_type}")
        return self
