"""The pipeline flow: every stage of the registry in order, then the gate, the registry and the promotion.

Every flow's parameters have defaults the Prefect UI's Run button can send as they are: `config` comes from the
deployment (prefect.yaml), `preset`/`overrides` spare editing the config's fields. The stage flows, one per stage
that reads another, are in flows/stages.py."""
from __future__ import annotations

import time
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from components.config.pipeline import PipelineConfig
from components.config.stages import stage as spec_of
from components.config.stages import stage_names
from flows.forms import Approval
from tasks.context import open_context, resolve_config, stages_from
from tasks.output import StageOutput
from tasks.promotion import champion_task, gate_task, promote_task, register_task
from tasks.runner import RunContext, load_output
from tasks.stages import stage_task
from tasks.tracking import is_key_metric

Stage = Literal[stage_names()]  # the registry's, so the UI offers them to pick from
Preset = Literal["demo", "grpo", "tiny", "smollm2"]  # configs/*.yaml (a unit test keeps them in step)


@flow(name="rlhf-pipeline", log_prints=True)
def rlhf_pipeline(config: PipelineConfig, force: list[Stage] | None = None, from_stage: Stage | None = None,
                  preset: Preset | None = None, overrides: list[str] | None = None,
                  feedback_uri: str | None = None) -> dict[str, StageOutput]:
    """data prep -> SFT -> reward model -> PPO, DPO and/or ES (`policies`) -> evaluation (the registry's stages, in
    order), each stage cached by config hash + upstream fingerprints + stage version; the best trained policy is
    registered in MLflow with the `candidate` alias.

    Args:
        config: The pipeline config (the deployment's default is configs/demo.yaml).
        force: Stages to recompute even when a stored output with the same cache key exists.
        from_stage: Recompute this stage and every stage after it.
        preset: Start from configs/{preset}.yaml instead of `config`.
        overrides: Dotted KEY=VALUE lines applied on top, e.g. ppo.iterations=100 or sft.lr=2e-5.
        feedback_uri: A stored human feedback dataset to add to reward.feedback (set by the feedback trigger).
    """
    start = time.perf_counter()
    config = resolve_config(config, preset, overrides, feedback_uri)
    ctx = open_context(config, f"{config.name}-pipeline", set(force or []) | stages_from(from_stage))
    with ctx.tracker.finishing(ctx.parent_run_id):
        outputs: dict[str, StageOutput] = {}
        model_name, champion = config.tracking.model_name or f"{config.name}-policy", None
        for stage in config.stages:
            if spec_of(stage).reads_champion:  # looked up as late as possible: another pipeline may promote
                champion = champion_task(model_name, ctx)
            on_pool(config, stage, ctx, **outputs)
            outputs[stage] = run_stage(stage, config, outputs, ctx, champion)
        evaluation = outputs[next(s for s in config.stages if spec_of(s).reads_policies)]
        p, policies = config.promotion, {name: outputs[name] for name in config.policies}
        decision = gate_task(evaluation, policies, champion, config.promotion_metric, p)
        chosen = decision["algorithm"]  # the policy stage the gate picked
        version = register_task(policies[chosen], model_name, config.tracking.alias, config.algorithm(chosen), ctx)
        approved = ask_approval(decision, p.approval_timeout_s) if decision["promote"] and p.require_approval else True
        promotion = promote_task(decision, approved, version, model_name, config.promotion_metric, ctx)
        seconds = time.perf_counter() - start
        # every stage's final metrics under the names its own run uses (one quantity, one MLflow column); where PPO's
        # last held-out evaluation and the evaluation stage measure the same quantity, the evaluation's comes last
        ctx.tracker.logger(ctx.parent_run_id)(0, {"pipeline/seconds": seconds, **{
            k: v for out in outputs.values() for k, v in out.metrics.items()}})
    summary = summarize(config, outputs, ctx, version, seconds) + f"\nPromotion: {promotion['reason']}.\n"
    ctx.tracker.describe(ctx.parent_run_id, summary)  # the run's description in the MLflow UI
    create_markdown_artifact(summary, key="rlhf-pipeline-summary", description="Stages, caching, metrics")
    get_run_logger().info("pipeline finished in %.1fs; MLflow run %s", seconds, ctx.parent_run_id)
    return outputs


def run_stage(stage: str, config: PipelineConfig, upstream: dict[str, StageOutput], ctx: RunContext,
              champion: StageOutput | None = None) -> StageOutput:
    """Stage `stage`'s task on its upstream outputs (and the champion, which the evaluation reads)."""
    return stage_task(stage)(config, {**upstream, **({"champion": champion} if champion else {})}, ctx)


def upstream_of(stage: str, config: PipelineConfig, ctx: RunContext, **uris: str | None) -> dict[str, StageOutput]:
    """What `stage` reads: each given `<name>_uri` loaded from the store, the others this config's (cached) outputs,
    computed with what they read in turn."""
    outputs: dict[str, StageOutput] = {}

    def need(name: str) -> StageOutput:
        if name not in outputs:
            uri = uris.get(f"{name}_uri")
            if not uri:
                for upstream in config.upstream(name):
                    need(upstream)
            outputs[name] = load_output(ctx.store, uri) if uri else run_stage(name, config, outputs, ctx)
        return outputs[name]

    return {name: need(name) for name in config.upstream(stage)}


def on_pool(config: PipelineConfig, stage: str, ctx: RunContext, **upstream: StageOutput) -> None:
    """When the stage's `placement.<stage>.work_pool` is set, run its `<stage>-adhoc` deployment there first (as a
    subflow, waiting for it) without forcing; the local task call that follows then finds the stored output."""
    pool = config.placement_of(stage).work_pool
    if pool is None or stage in ctx.force:
        return
    from prefect.deployments import run_deployment

    get_run_logger().info("%s: dispatching to work pool %s", stage, pool)
    run = run_deployment(f"{stage}/{stage}-adhoc", timeout=None, poll_interval=2, parameters={
        "config": config.model_dump(mode="json"), "force": False,
        **{f"{name}_uri": upstream[name].uri for name in config.upstream(stage)}})
    if not run.state.is_completed():
        raise RuntimeError(f"{stage} on work pool {pool}: flow run {run.name} ended {run.state.name}")


def ask_approval(decision: dict, timeout_s: int) -> bool:
    """Pause for a person's decision in the Prefect UI; no answer within the timeout keeps the champion."""
    description = (f"**Promote the candidate to champion?** Gate: {decision['reason']}. "
                   "Tick approve and submit to promote; leave it to keep the current champion.")
    try:
        answer = pause_flow_run(wait_for_input=Approval.with_initial_data(description=description),
                                timeout=timeout_s, key="promotion")
    except FlowPauseTimeout:
        get_run_logger().warning("no approval within %ss: the champion stays", timeout_s)
        return False
    return answer.approve


def summarize(config: PipelineConfig, outputs: dict[str, StageOutput], ctx: RunContext, version: str,
              seconds: float) -> str:
    """The markdown summary of one pipeline run (also printed by `rlhf run`)."""
    lines = [f"# {config.name}: pipeline run `{ctx.parent_run_id}`", "",
             f"{seconds:.1f}s. MLflow: {ctx.tracker.uri}, experiment `{config.tracking.experiment or config.name}`. "
             f"Policy registered as `{config.tracking.model_name or config.name + '-policy'}` version {version} "
             f"(alias `{config.tracking.alias}`). Runs side by side: {ctx.tracker.key_metrics_url()}", "",
             "| stage | cached | output | key metrics |", "|---|---|---|---|"]
    for name, out in outputs.items():
        shown = ", ".join(f"{k}={v:.4g}" for k, v in out.metrics.items() if is_key_metric(k))
        lines.append(f"| {name} | {'yes' if out.cached else 'no'} | `{out.uri}` | {shown} |")
    return "\n".join(lines) + "\n"
