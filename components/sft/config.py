"""The SFT stage's config (TRL's SFTConfig, reduced to what this pipeline uses)."""
from __future__ import annotations

from pydantic import Field

from components.compute.config import TrainingConfig
from components.models.config import ArchSpec, ModelSpec


class SFTConfig(TrainingConfig):
    """Fine-tune a causal LM on prompt/completion pairs; the loss covers completion tokens only."""

    model: ModelSpec = Field(default_factory=lambda: ModelSpec(arch=ArchSpec()), description="Model to fine-tune.")
