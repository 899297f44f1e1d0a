"""One Prefect task per registered stage: the PipelineConfig and upstream StageOutputs in, a StageOutput out. Every
stage task is the same few lines: the stage's inputs and cache key from its registry entry, its run by the
launcher its placement names.

Caching is ours (tasks.runner), not Prefect's: a stored output is reused only if it still exists and verifies,
which a Prefect cache record cannot know. So every task has `cache_policy=NO_CACHE`. A training task is retried
once (RESUMING): like a rerun of the flow, the retry resumes from the stage's stored checkpoint, or stores a
finished output whose upload failed, never starting over.
"""
from __future__ import annotations

import functools

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from components.config.pipeline import PipelineConfig
from components.config.stages import stage as spec_of
from components.errors import RLHFError
from components.io.store import StoreError
from components.stage import inputs_for
from tasks.launchers import launch
from tasks.launchers.request import StageRequest
from tasks.output import StageOutput
from tasks.runner import RunContext, execute, load_output


def _worth_a_retry(task, task_run, state) -> bool:
    """Retry a failed training task (the retry resumes from its checkpoint, or stores its finished output) unless
    the error is the user's input or a store error no retry can fix: retrying those only delays the error."""
    error = state.data
    if isinstance(error, StoreError):
        return not error.permanent
    return not isinstance(error, RLHFError)


RESUMING = {"retries": 1, "retry_delay_seconds": 10, "retry_condition_fn": _worth_a_retry}


@functools.cache
def stage_task(stage: str) -> Task:
    """The Prefect task of stage `stage`, named and versioned as its registry entry says."""
    spec = spec_of(stage)

    @task(name=stage, version=spec.version, cache_policy=NO_CACHE, **(RESUMING if spec.trains else {}))
    def run(config: PipelineConfig, upstream: dict[str, StageOutput], ctx: RunContext) -> StageOutput:
        return execute_stage(stage, config, upstream, ctx)

    return run


def execute_stage(stage: str, config: PipelineConfig, upstream: dict[str, StageOutput], ctx: RunContext) -> StageOutput:
    """Stage `stage` of `config` on its upstream outputs (`upstream` may hold more; a `champion` is read when the
    stage reads one and it is none of the policies): cached by its section, declared settings, upstream
    fingerprints and version; computed by the launcher its placement names."""
    spec, placement, section = spec_of(stage), config.placement_of(stage), config.section(stage)
    parents = {name: upstream[name] for name in config.upstream(stage)}
    champion = upstream.get("champion")  # evaluated beside the policies unless it is one of them
    if spec.reads_champion and champion and champion.fingerprint not in {
            parents[p].fingerprint for p in config.policies if p in parents}:
        parents["champion"] = champion
    uris = section.feedback if spec.reads_feedback else []
    feedback = [f"feedback{i}" for i in range(len(uris))]  # their fingerprints join the key
    parents.update({name: load_output(ctx.store, uri) for name, uri in zip(feedback, uris)})
    settings = spec.settings_of(config)

    def compute(dirs, out, stage_run):
        inputs = inputs_for(stage, config, {k: v for k, v in dirs.items() if k not in feedback},
                            [dirs[name] for name in feedback])
        return launch(StageRequest.of(stage, config, inputs, out), stage_run, placement)

    return execute(stage, spec.version, section, parents, compute, ctx, settings, placement)
