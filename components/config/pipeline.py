"""`PipelineConfig`: every stage's config in one typed object (the Prefect UI renders it as a form)."""
from __future__ import annotations

from pydantic import Field, model_validator

from components.config.base import StrictModel
from components.data.config import DataConfig
from components.evaluation.config import EvaluationConfig, PromotionConfig
from components.evaluation.gold import DEMO_GOLD
from components.ppo.config import PPOConfig
from components.reward.config import RewardConfig
from components.sft.config import SFTConfig


class TrackingConfig(StrictModel):
    """MLflow names. The tracking server itself comes from MLFLOW_TRACKING_URI (default: sqlite in state_dir)."""

    experiment: str | None = Field(None, description="MLflow experiment; default: the pipeline name.")
    model_name: str | None = Field(None, description="Registered model of the final policy; default: {name}-policy.")
    alias: str = Field("candidate", min_length=1, description="Registry alias given to each new policy version.")


class PipelineConfig(StrictModel):
    """The whole chain: data prep -> SFT -> reward model -> PPO -> evaluation."""

    name: str = Field("rlhf-demo", min_length=1, description="Pipeline name; MLflow experiment and model names derive from it.")
    output_dir: str = Field(".rlhf/artifacts", description="Artifact root: a local directory or s3://bucket/prefix; "
                                                           "outputs go to {root}/{stage}/{cache_key}/.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint for MinIO-style servers; default: "
                                                          "AWS_ENDPOINT_URL, else AWS itself.")
    state_dir: str = Field(".rlhf", description="Local state: MLflow sqlite store, Prefect home, caches, work dirs.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow experiment and registry.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data prep stage.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Supervised fine-tuning stage.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Reward model stage.")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="PPO stage.")
    evaluate: EvaluationConfig = Field(default_factory=EvaluationConfig, description="Evaluation stage.")
    promotion: PromotionConfig = Field(default_factory=PromotionConfig, description="Candidate -> champion gate.")

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

    @model_validator(mode="after")
    def _gold_exists(self) -> "PipelineConfig":
        if self.promotion.metric == "gold_mean" and self.gold_fn is None:
            raise ValueError("promotion.metric: gold_mean needs a gold scorer: data.source: demo or evaluate.gold_fn "
                             "(or use score_mean / auto)")
        return self

    @property
    def gold_fn(self) -> str | None:
        """The gold scorer as module:function: `evaluate.gold_fn`, else the demo's with demo data, else None."""
        return self.evaluate.gold_fn or (DEMO_GOLD if self.data.source == "demo" else None)

    @property
    def promotion_metric(self) -> str:
        """The metric the gate compares (`auto` resolved by whether a gold scorer exists)."""
        if self.promotion.metric != "auto":
            return self.promotion.metric
        return "gold_mean" if self.gold_fn else "score_mean"
