"""Opening a pipeline run: the artifact store, the MLflow experiment and the run's parent MLflow run."""
from __future__ import annotations

import os
import time
from pathlib import Path

from components.config.pipeline import STAGES, PipelineConfig
from components.io.store import ArtifactStore
from tasks.runner import RunContext
from tasks.tracking import Tracker, default_tracking_uri, flatten

PRESETS = Path(__file__).parents[1] / "configs"


def open_context(config: PipelineConfig, run_name: str, force: set[str]) -> RunContext:
    """Artifact store, MLflow experiment and the pipeline's parent run."""
    if config.s3_endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = config.s3_endpoint_url
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    uri = default_tracking_uri(state)
    artifacts = (state / "mlruns").resolve().as_uri() if uri.startswith("sqlite") else None
    tracker = Tracker(uri, config.tracking.experiment or config.name, artifacts)
    run_name = f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"  # distinct in MLflow's run list
    parent = tracker.start_run(run_name, flatten(config.model_dump(mode="json")),
                               {"rlhf.pipeline": config.name, "rlhf.kind": "pipeline"})
    tracker.log_file(parent, "config.json", config.model_dump_json(indent=1))
    return RunContext(ArtifactStore(config.output_dir, state / "cache"), tracker, parent, state / "work", force)


def resolve_config(config: PipelineConfig, preset: str | None = None, overrides: list[str] | None = None,
                   feedback_uri: str | None = None) -> PipelineConfig:
    """The config a flow run uses: configs/{preset}.yaml instead of `config` when a preset is named, then the
    overrides, then a feedback dataset added to `reward.feedback` (the feedback trigger's parameter)."""
    from components.config.loading import load_config, with_overrides

    if preset:
        config = load_config(PRESETS / f"{preset}.yaml")
    if overrides:
        config = with_overrides(config, overrides)
    if feedback_uri and feedback_uri not in config.reward.feedback:
        config = config.model_copy(update={"reward": config.reward.model_copy(
            update={"feedback": [*config.reward.feedback, feedback_uri]})})
    return config


def stages_from(stage: str | None) -> set[str]:
    """`--from-stage reward` forces reward and every stage after it."""
    if stage is None:
        return set()
    if stage not in STAGES:
        raise ValueError(f"--from-stage {stage!r}: expected one of {', '.join(STAGES)}")
    return set(STAGES[STAGES.index(stage):])
