"""`PipelineConfig`: every stage's config in one typed object (the Prefect UI renders it as a form)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.config.base import StrictModel
from components.data.config import DataConfig
from components.errors import ConfigError
from components.dpo.config import DPOConfig
from components.es.config import ESConfig
from components.evaluation.config import EvaluationConfig, PromotionConfig
from components.evaluation.gold import DEMO_GOLD
from components.io.redact import has_userinfo
from components.ppo.config import PPOConfig
from components.reward.config import RewardConfig
from components.sft.config import SFTConfig


STAGES = ("data", "sft", "reward", "ppo", "dpo", "es", "evaluate")  # the pipeline's order
POLICY_STAGES = ("ppo", "dpo", "es")  # the stages that train a candidate policy from the SFT model
_NEEDS = {"data": (), "sft": ("data",), "reward": ("data", "sft"), "ppo": ("data", "sft", "reward"),
          "dpo": ("data", "sft"),  # DPO learns from the pairs themselves: no reward model in its inputs (nor key)
          "es": ("data", "sft", "reward")}
_REWARDED = ("ppo", "es")  # stages whose reward may be the reward stage's model (their `rewards` say)


class TrackingConfig(StrictModel):
    """MLflow names. The tracking server itself comes from MLFLOW_TRACKING_URI (default: sqlite in state_dir)."""

    experiment: str | None = Field(None, description="MLflow experiment; default: the pipeline name.")
    model_name: str | None = Field(None, description="Registered model of the final policy; default: {name}-policy.")
    alias: str = Field("candidate", min_length=1, description="Registry alias given to each new policy version.")


class PipelineConfig(StrictModel):
    """The whole chain: data prep -> SFT -> reward model -> PPO (and/or DPO) -> evaluation."""

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
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="DPO stage (trained when `policies` names it).")
    es: ESConfig = Field(default_factory=ESConfig, description="Evolution strategies stage (trained when `policies` "
                         "names it).")
    policies: list[Literal["ppo", "dpo", "es"]] = Field(["ppo"], min_length=1, description="Policy stages to train, "
                                                  "each from the same SFT model; the evaluation compares them and "
                                                  "the gate picks the best candidate.")
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

    @model_validator(mode="after")
    def _no_credentials(self) -> "PipelineConfig":
        """A config is stored (MLflow params, config.json, Prefect flow-run parameters): no secrets in it."""
        for field, value in _strings(self.model_dump(mode="json")):
            if has_userinfo(value):
                raise ValueError(f"{field}: credentials inside a URL are not accepted (the config is stored with "
                                 "every run); give them by environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                                 "HF_TOKEN, ~/.netrc)")
        return self

    @field_validator("policies")
    @classmethod
    def _distinct_policies(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"{value} names a stage twice")
        return value

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this config runs, in order (policy stages only when `policies` names them)."""
        return tuple(s for s in STAGES if s not in POLICY_STAGES or s in self.policies)

    def upstream(self, stage: str) -> tuple[str, ...]:
        """The stages whose outputs `stage` reads, in pipeline order. PPO and ES read the reward stage's model only
        when a term of their `rewards` is the reward model and their `reward_model` names none, so a verifiable-reward
        run's key does not change with the reward model."""
        needs = _NEEDS.get(stage, tuple(s for s in self.stages if s != "evaluate"))
        if stage in _REWARDED and (not getattr(self, stage).uses_reward_model or getattr(self, stage).reward_model):
            needs = tuple(s for s in needs if s != "reward")
        return tuple(s for s in self.stages if s in needs)

    def algorithm(self, stage: str) -> str:
        """The algorithm a policy stage trains with: the ppo stage's estimator (ppo, grpo, rloo, reinforce_pp), or
        the stage's name (dpo)."""
        return self.ppo.algorithm if stage == "ppo" else stage

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


def _strings(value, path: str = ""):
    """(dotted path, string) of every string in a dumped config."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}.{i}")


def check_local_models(config: PipelineConfig) -> None:
    """A ConfigError naming each model or tokenizer field whose local path (absolute, ./, ../, ~, or a .gguf file)
    does not exist: checked when a run starts, so a typo fails before data prep and DeepSpeed start-up. Hub ids
    and s3:// dirs are resolved when loaded. Not part of validation: a deployment's config is valid on the machine
    that registers it even when its paths exist only on the workers."""
    missing = []
    for field, value in _strings(config.model_dump(mode="json")):
        if field.rsplit(".", 1)[-1] not in ("name_or_path", "tokenizer"):
            continue
        local = value.startswith(("/", "./", "../", "~")) or value.endswith(".gguf")
        if local and not Path(value).expanduser().exists():
            missing.append(f"{field}: {value}")
    if missing:
        raise ConfigError("no such file or directory:\n  " + "\n  ".join(missing))
