"""Launchers: where a stage runs, chosen once (by the runner, from the stage's `placement`).

A launcher is a function `launch(request, stage_run, placement) -> metrics`: it runs the `StageRequest` (stage,
entry point, config section, inputs, output dir) on its ranks, each calling `request.run(hooks)` (the per-rank
function, `tasks.launchers.rank`), with rank 0 logging into the stage's MLflow run `stage_run` and copying its
checkpoints to the store; it returns rank 0's metrics. `in_process` runs it in this process (one rank), `torchrun`
on `placement.num_processes` ranks of this node. A new launcher (Ray) is a module with a `launch` function, a name in
`LAUNCHERS` and in `StagePlacement.launcher`.
"""
from __future__ import annotations

import importlib

# name -> the module whose `launch(request, stage_run, placement)` it is; imported when used, so a rank importing
# this package (tasks.launchers.rank) loads neither the tracker nor Prefect
LAUNCHERS: dict[str, str] = {"in_process": "tasks.launchers.in_process", "torchrun": "tasks.launchers.torchrun"}


def launch(request, stage_run, placement) -> dict[str, float]:
    """Run `request` (a StageRequest) where `placement` (a StagePlacement) says, reporting into `stage_run` (a
    tasks.runner.StageRun); rank 0's metrics."""
    return importlib.import_module(LAUNCHERS[placement.resolved_launcher]).launch(request, stage_run, placement)
