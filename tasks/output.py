"""What one stage hands the next: a small reference, never the model or the data itself."""
from __future__ import annotations

import hashlib

from pydantic import BaseModel, Field


class StageOutput(BaseModel):
    """A finished stage output in the artifact store."""

    stage: str = Field(description="Stage name: data, sft, reward, ppo.")
    uri: str = Field(description="Where the output lives: <artifact root>/<stage>/<cache_key>.")
    fingerprint: str = Field(description="sha256 of the output's file list (its content).")
    config_hash: str = Field(description="Hash of the stage's config.")
    cache_key: str = Field(description="Stage name + version + config hash + upstream fingerprints, hashed.")
    parents: dict[str, str] = Field(default_factory=dict, description="Upstream stage -> fingerprint.")
    mlflow_run_id: str | None = Field(None, description="The MLflow run that produced the output.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Headline metrics of that run.")
    cached: bool = Field(False, description="True when this flow run reused a stored output.")


def cache_key(stage: str, version: str, config_hash: str, parents: dict[str, str]) -> str:
    """Stage name, version, config hash and upstream fingerprints: never a path (a path can hold stale data)."""
    parts = [stage, version, config_hash] + [f"{k}={v}" for k, v in sorted(parents.items())]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
