"""Where a stage runs: its launcher and processes, its work pool, the concurrency limit it holds.

Placement is a pipeline-level section (`placement: {sft: {num_processes: 2}}`), apart from the stages' own
sections, so by construction it never reaches a stage's cache key: where a stage runs does not change what it
makes (2 ranks compute what 1 rank does)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config.base import StrictModel


class StagePlacement(StrictModel):
    """How and where one stage runs."""

    launcher: Literal["in_process", "torchrun"] | None = Field(
        None, description="in_process: in the task's own process; torchrun: `num_processes` ranks on this node "
                          "(with 1, a process of its own, whose memory goes back to the OS when it ends); null: "
                          "torchrun when num_processes is above 1, else in_process.")
    num_processes: int = Field(1, ge=1, description="Processes (GPUs) on this node; rank 0 logs into the stage's "
                                                    "MLflow run.")
    work_pool: str | None = Field(None, description="Run this stage on that Prefect work pool (through its "
                                  "`{stage}-adhoc` deployment) instead of in the pipeline flow's process, e.g. `gpu`.")
    concurrency_limit: str | None = Field(None, description="Prefect global concurrency limit (e.g. `gpu`, sized to "
                                          "a worker's GPUs) held while the stage runs, one slot per process.")

    @model_validator(mode="after")
    def _launcher_fits(self) -> "StagePlacement":
        if self.launcher == "in_process" and self.num_processes > 1:
            raise ValueError(f"num_processes={self.num_processes} needs launcher: torchrun (in_process is one "
                             "process)")
        return self

    @property
    def resolved_launcher(self) -> str:
        """The launcher that runs the stage (`launcher`, or what null means for `num_processes`)."""
        return self.launcher or ("torchrun" if self.num_processes > 1 else "in_process")
