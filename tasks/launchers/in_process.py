"""The in-process launcher: the stage runs as one rank inside the task's own process."""
from __future__ import annotations

from components.config.placement import StagePlacement
from tasks.launchers.request import StageRequest
from tasks.runner import StageRun


def launch(request: StageRequest, stage_run: StageRun, placement: StagePlacement) -> dict[str, float]:
    """Run `request` here, reporting into `stage_run` (its MLflow run, its checkpoints, SIGTERM)."""
    return request.run(stage_run.hooks())
