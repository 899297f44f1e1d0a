"""Opening a pipeline run: the artifact store, the MLflow experiment and the run's parent MLflow run."""
from __future__ import annotations

import os
import time
from pathlib import Path

from prefect.runtime import flow_run

from components.config.pipeline import PipelineConfig, check_local_models
from components.config.stages import stage_names
from components.io.locks import file_lock
from components.io.store import ArtifactStore
from tasks.runner import RunContext
from tasks.tracking import Tracker, default_tracking_uri, flatten

PRESETS = Path(__file__).parents[1] / "configs"
FLOW_RUN = "rlhf.prefect_flow_run_id"  # the Prefect flow run a pipeline's MLflow run belongs to


def open_context(config: PipelineConfig, run_name: str, force: set[str]) -> RunContext:
    """Artifact store, MLflow experiment and the pipeline's parent run."""
    if config.s3_endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = config.s3_endpoint_url
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    uri = default_tracking_uri(state)
    artifacts = (state / "mlruns").resolve().as_uri() if uri.startswith("sqlite") else None
    with file_lock(state / ".locks" / "mlflow.lock", "MLflow's set-up"):  # two runs at once: one creates db
        tracker = Tracker(uri, config.tracking.experiment or config.name, artifacts)  # and experiment, the other waits
    end_abandoned(tracker)
    run_name = f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"  # distinct in MLflow's run list
    parent = tracker.start_run(run_name, flatten(config.model_dump(mode="json")),
                               {"rlhf.pipeline": config.name, "rlhf.kind": "pipeline",
                                FLOW_RUN: str(flow_run.id or "")})
    tracker.log_file(parent, "config.json", config.model_dump_json(indent=1))
    return RunContext(ArtifactStore(config.output_dir, state / "cache"), tracker, parent, state / "work", force)


def end_abandoned(tracker: Tracker) -> None:
    """Runs that a dead process left RUNNING end now: the MLflow runs FAILED, and the Prefect flow run of each
    (with its task runs still running) Crashed, when this server has it."""
    from prefect import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterState,
                                                TaskRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    abandoned = [r.data.tags[FLOW_RUN] for r in tracker.end_abandoned() if r.data.tags.get(FLOW_RUN)]
    if not abandoned:
        return

    with get_client(sync_client=True) as client:
        for flow_run_id in abandoned:
            reason = "its process died while it ran (found by the next run)"
            try:
                run = client.read_flow_run(flow_run_id)
            except Exception:  # another server's run (PREFECT_API_URL changed since): nothing to end here
                continue
            if not run.state.is_final():
                client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
            running = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                                            task_run_filter=TaskRunFilter(state=TaskRunFilterState(
                                                type=TaskRunFilterStateType(any_=[StateType.RUNNING]))))
            for task_run in running:
                client.set_task_run_state(task_run.id, Crashed(message=reason), force=True)


def resolve_config(config: PipelineConfig, preset: str | None = None, overrides: list[str] | None = None,
                   feedback_uri: str | None = None) -> PipelineConfig:
    """The config a flow run uses: configs/{preset}.yaml instead of `config` when a preset is named, then the
    overrides, then a feedback dataset added to `reward.feedback` (the feedback trigger's parameter). A local
    model path that does not exist is an error here, before any work."""
    from components.config.loading import load_config, with_overrides

    if preset:
        config = load_config(PRESETS / f"{preset}.yaml")
    if overrides:
        config = with_overrides(config, overrides)
    if feedback_uri and feedback_uri not in config.reward.feedback:
        config = config.model_copy(update={"reward": config.reward.model_copy(
            update={"feedback": [*config.reward.feedback, feedback_uri]})})
    check_local_models(config)
    return config


def stages_from(stage: str | None) -> set[str]:
    """`--from-stage reward` forces reward and every stage after it."""
    if stage is None:
        return set()
    names = stage_names()
    if stage not in names:
        raise ValueError(f"--from-stage {stage!r}: expected one of {', '.join(names)}")
    return set(names[names.index(stage):])
