"""The configs every on-policy RL stage shares: how responses are sampled, and what a policy is rewarded by."""
from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from components.config.base import StrictModel
from components.config.functions import importable
from components.models.config import ModelSpec, ScorerSpec


class RolloutConfig(StrictModel):
    """How responses are sampled with HF `generate` (KV cache, left padding)."""

    max_new_tokens: int = Field(32, ge=1, description="Response length limit in tokens.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 means greedy decoding.")
    top_k: int = Field(0, ge=0, description="Sample from the k most likely tokens; 0 disables.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1 disables.")
    stop_at_eos: bool = Field(True, description="End a response at its first EOS; false generates max_new_tokens "
                                                "tokens and trains on all of them.")


class RewardFunctionConfig(StrictModel):
    """One term of the training reward: the reward model, or a Python function, times a weight."""

    function: str | None = Field(None, description="module:function called as fn(prompts, responses) -> list of "
                                 "floats (a verifiable or programmatic reward); null: the reward model "
                                 "(ppo.reward_model, else the reward stage's).")
    weight: float = Field(1.0, description="Weight of this term in the summed reward.")
    name: str | None = Field(None, min_length=1, description="Name in the logs (rewards/{name}/mean); default: the "
                                                             "function's name, or reward_model.")

    @field_validator("function")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        return importable(value, "function")

    @property
    def label(self) -> str:
        return self.name or (self.function.rpartition(":")[2] if self.function else "reward_model")


class RewardedPolicyConfig(StrictModel):
    """What an RL stage (PPO and its critic-free estimators, ES) starts from and is rewarded by."""

    model: ModelSpec | None = Field(None, description="Initial policy; default: the SFT stage's output model.")
    reward_model: ScorerSpec | None = Field(None, description="Scorer (with its own tokenizer); default: the reward "
                                            "stage's output model. The evaluation stage scores with it too.")
    rewards: list[RewardFunctionConfig] = Field(
        default_factory=lambda: [RewardFunctionConfig()], min_length=1,
        description="The reward, a weighted sum of terms, each logged as rewards/{name}/mean: the reward model "
                    "and/or Python functions. Default: the reward model alone.")

    @model_validator(mode="after")
    def _reward_terms(self):
        labels = [r.label for r in self.rewards]
        if len(set(labels)) != len(labels):
            raise ValueError(f"rewards: two terms are named alike ({labels}); give them distinct names")
        if sum(r.function is None for r in self.rewards) > 1:
            raise ValueError("rewards: the reward model is listed twice")
        if self.reward_model is not None and not self.uses_reward_model:
            raise ValueError("reward_model is set but no entry of rewards uses it (an entry without `function`)")
        return self

    @property
    def uses_reward_model(self) -> bool:
        """Whether a term of the reward is the reward model (else it is never loaded)."""
        return any(r.function is None for r in self.rewards)
