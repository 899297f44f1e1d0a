"""`PipelineConfig`: every stage's config in one typed object (the Prefect UI renders it as a form)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from components.config.base import StrictModel
from components.config.placement import StagePlacement
from components.config.stages import policy_stages, stage, stage_names, stages
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
    # each stage's section, under the field its registry entry (components/config/stages.py) names
    data: DataConfig = Field(default_factory=DataConfig, description="Data prep stage.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Supervised fine-tuning stage.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Reward model stage.")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="PPO stage.")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="DPO stage (trained when `policies` names it).")
    es: ESConfig = Field(default_factory=ESConfig, description="Evolution strategies stage (trained when `policies` "
                         "names it).")
    # validated against the registry when a config is validated (a stage registered later counts); the enum is
    # what the Prefect UI offers to pick from
    policies: list[str] = Field(["ppo"], min_length=1, description="Policy stages to train, each from the same SFT "
                                "model; the evaluation compares them and the gate picks the best candidate.",
                                json_schema_extra={"items": {"type": "string", "enum": list(policy_stages())}})
    evaluate: EvaluationConfig = Field(default_factory=EvaluationConfig, description="Evaluation stage.")
    promotion: PromotionConfig = Field(default_factory=PromotionConfig, description="Candidate -> champion gate.")
    placement: dict[str, StagePlacement] = Field(
        default_factory=dict, description="Where each stage runs, by stage name (e.g. sft: {num_processes: 2, "
                                          "work_pool: gpu}); a stage not named runs in the pipeline's process. Not "
                                          "part of any cache key.")

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
    def _registered_policies(cls, value: list[str]) -> list[str]:
        known = policy_stages()
        if unknown := [p for p in value if p not in known]:
            raise ValueError(f"{unknown} are not policy stages; expected some of {', '.join(known)}")
        if len(set(value)) != len(value):
            raise ValueError(f"{value} names a stage twice")
        return value

    @field_validator("placement")
    @classmethod
    def _placeable(cls, value: dict[str, StagePlacement]) -> dict[str, StagePlacement]:
        for name, placement in value.items():
            if name not in stage_names():
                raise ValueError(f"{name}: no such stage; expected some of {', '.join(stage_names())}")
            if not stage(name).trains:
                raise ValueError(f"{name}: only training stages are placed; {name} runs in the pipeline's process")
        return value

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this config runs, in order (policy stages only when `policies` names them)."""
        return tuple(s.name for s in stages() if not s.policy or s.name in self.policies)

    def upstream(self, name: str) -> tuple[str, ...]:
        """The stages whose outputs stage `name` reads, in pipeline order (its registered reads, those that hold
        for this config, and the policies when it reads them)."""
        spec = stage(name)
        needs = {s for s in spec.reads if s not in spec.reads_when or spec.reads_when[s](self)}
        needs |= set(self.policies) if spec.reads_policies else set()
        return tuple(s for s in self.stages if s in needs)

    def section(self, name: str) -> StrictModel:
        """Stage `name`'s own config section (an empty one for a stage that has none)."""
        field = stage(name).config
        return getattr(self, field) if field else StrictModel()

    def placement_of(self, name: str) -> StagePlacement:
        """Where stage `name` runs: its `placement` entry, or in the pipeline's process."""
        return self.placement.get(name) or StagePlacement()

    def algorithm(self, name: str) -> str:
        """The algorithm a policy stage trains with, as its registry entry says (ppo: its estimator, ppo, grpo,
        rloo or reinforce_pp), else the stage's name (dpo, es)."""
        spec = stage(name)
        return spec.algorithm(self) if spec.algorithm else name

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
