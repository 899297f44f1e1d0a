"""Opening a pipeline run: the artifact store, the MLflow experiment and the run's parent MLflow run."""
from __future__ import annotations

import os
from pathlib import Path

from components.config.pipeline import PipelineConfig
from components.io.store import ArtifactStore
from tasks.runner import RunContext
from tasks.tracking import Tracker, default_tracking_uri, flatten

STAGES = ("data", "sft", "reward", "ppo", "evaluate")


def open_context(config: PipelineConfig, run_name: str, force: set[str]) -> RunContext:
    """Artifact store, MLflow experiment and the pipeline's parent run."""
    if config.s3_endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = config.s3_endpoint_url
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    uri = default_tracking_uri(state)
    artifacts = (state / "mlruns").resolve().as_uri() if uri.startswith("sqlite") else None
    tracker = Tracker(uri, config.tracking.experiment or config.name, artifacts)
    parent = tracker.start_run(run_name, flatten(config.model_dump(mode="json")),
                               {"rlhf.pipeline": config.name, "rlhf.kind": "pipeline"})
    tracker.log_file(parent, "config.json", config.model_dump_json(indent=1))
    return RunContext(ArtifactStore(config.output_dir, state / "cache"), tracker, parent, state / "work", force)


def stages_from(stage: str | None) -> set[str]:
    """`--from-stage reward` forces reward and every stage after it."""
    if stage is None:
        return set()
    if stage not in STAGES:
        raise ValueError(f"--from-stage {stage!r}: expected one of {', '.join(STAGES)}")
    return set(STAGES[STAGES.index(stage):])
