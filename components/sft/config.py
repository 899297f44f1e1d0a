"""The SFT stage's config (TRL's SFTConfig, reduced to what this pipeline uses)."""
from __future__ import annotations

from pydantic import Field

from components.compute.config import ComputeConfig
from components.config.base import StrictModel
from components.models.config import ArchSpec, ModelSpec


class SFTConfig(StrictModel):
    """Fine-tune a causal LM on prompt/completion pairs; the loss covers completion tokens only."""

    model: ModelSpec = Field(default_factory=lambda: ModelSpec(arch=ArchSpec()), description="Model to fine-tune.")
    compute: ComputeConfig = Field(default_factory=ComputeConfig, description="DeepSpeed settings.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps, then cosine decay to 10% of lr.")
    epochs: int = Field(2, ge=1, description="Passes over the training set.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    eval_every: int = Field(50, ge=1, description="Evaluate held-out loss every N optimizer steps.")
    log_every: int = Field(10, ge=1, description="Report training metrics every N optimizer steps.")
    seed: int = Field(0, description="Seed for init, shuffling and dropout.")
