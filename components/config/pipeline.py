"""`PipelineConfig`: every stage's config in one typed object (the Prefect UI renders it as a form)."""
from __future__ import annotations

from pydantic import Field, model_validator

from components.config.base import StrictModel
from components.data.config import DataConfig
from components.ppo.config import PPOConfig
from components.reward.config import RewardConfig
from components.sft.config import SFTConfig


class PipelineConfig(StrictModel):
    """The whole chain: data prep -> SFT -> reward model -> PPO."""

    name: str = Field("rlhf-demo", min_length=1, description="Pipeline name; MLflow experiment and model names derive from it.")
    output_dir: str = Field(".rlhf/artifacts", description="Artifact root: a local directory (s3:// with the pipeline).")
    data: DataConfig = Field(default_factory=DataConfig, description="Data prep stage.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Supervised fine-tuning stage.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Reward model stage.")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="PPO stage.")

    @model_validator(mode="after")
    def _fits_context(self) -> "PipelineConfig":
        arch = self.sft.model.arch
        if arch is not None and arch.max_positions < self.data.max_length:
            raise ValueError(
                f"sft.model.arch.max_positions={arch.max_positions} is shorter than data.max_length={self.data.max_length}")
        need = self.data.max_prompt_length + self.ppo.rollout.max_new_tokens
        if arch is not None and self.ppo.model is None and arch.max_positions < need:
            raise ValueError(f"sft.model.arch.max_positions={arch.max_positions} is shorter than data.max_prompt_length"
                             f" + ppo.rollout.max_new_tokens = {need}")
        return self
