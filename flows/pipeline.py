"""Prefect flows: the whole chain, and one flow per stage that starts from stored upstream outputs."""
from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from components.config.pipeline import PipelineConfig
from tasks.context import open_context, stages_from
from tasks.output import StageOutput
from tasks.runner import RunContext, load_output
from tasks.stages import (champion_task, data_task, evaluate_task, gate_task, ppo_task, promote_task, register_task,
                          reward_task, sft_task)


class Approval(RunInput):
    """The form a person fills in the Prefect UI to let a candidate become champion."""

    approve: bool = Field(False, description="Promote this candidate to champion.")
    comment: str = Field("", description="Why (kept with the decision).")


@flow(name="rlhf-pipeline", log_prints=True)
def rlhf_pipeline(config: PipelineConfig, force: list[str] | None = None,
                  from_stage: str | None = None) -> dict[str, StageOutput]:
    """data prep -> SFT -> reward model -> PPO -> evaluation, each stage cached by config hash + upstream fingerprints +
    stage version; the PPO policy is registered in MLflow with the `candidate` alias."""
    start = time.perf_counter()
    ctx = open_context(config, f"{config.name}-pipeline", set(force or []) | stages_from(from_stage))
    try:
        outputs = {"data": data_task(config.data, ctx)}
        on_pool(config, "sft", ctx, data=outputs["data"])
        outputs["sft"] = sft_task(config.sft, config.data.max_length, outputs["data"], ctx)
        on_pool(config, "reward", ctx, data=outputs["data"], sft=outputs["sft"])
        outputs["reward"] = reward_task(config.reward, config.data.max_length, outputs["data"], outputs["sft"], ctx)
        on_pool(config, "ppo", ctx, data=outputs["data"], sft=outputs["sft"], reward=outputs["reward"])
        outputs["ppo"] = ppo_task(config.ppo, config.data.max_length, config.gold_fn, outputs["data"], outputs["sft"],
                                  outputs["reward"], ctx)
        model_name = config.tracking.model_name or f"{config.name}-policy"
        champion = champion_task(model_name, ctx)
        outputs["evaluate"] = evaluate_task(config.evaluate, config.data.max_length, config.gold_fn,
                                            config.ppo.reward_model, outputs["data"], outputs["sft"],
                                            outputs["reward"], outputs["ppo"], champion, ctx)
        version = register_task(outputs["ppo"], model_name, config.tracking.alias, ctx)
        p = config.promotion
        decision = gate_task(outputs["evaluate"], outputs["ppo"], champion, config.promotion_metric, p)
        approved = ask_approval(decision, p.approval_timeout_s) if decision["promote"] and p.require_approval else True
        promotion = promote_task(decision, approved, version, model_name, ctx)
    except BaseException:
        ctx.tracker.finish(ctx.parent_run_id, ok=False)
        raise
    seconds = time.perf_counter() - start
    ctx.tracker.logger(ctx.parent_run_id)(0, {"pipeline/seconds": seconds, **{
        f"{name}/{k}": v for name, out in outputs.items() for k, v in out.metrics.items()
        if k.startswith("eval") or name == "evaluate"}})
    ctx.tracker.finish(ctx.parent_run_id)
    summary = summarize(config, outputs, ctx, version, seconds) + f"\nPromotion: {promotion['reason']}.\n"
    create_markdown_artifact(summary, key="rlhf-pipeline-summary", description="Stages, caching, metrics")
    get_run_logger().info("pipeline finished in %.1fs; MLflow run %s", seconds, ctx.parent_run_id)
    return outputs


def on_pool(config: PipelineConfig, stage: str, ctx: RunContext, **upstream: StageOutput) -> None:
    """When the stage's `compute.work_pool` is set, run its `<stage>-adhoc` deployment there first (as a
    subflow, waiting for it) without forcing; the local task call that follows then finds the stored output."""
    pool = getattr(config, stage).compute.work_pool
    if pool is None or stage in ctx.force:
        return
    from prefect.deployments import run_deployment

    get_run_logger().info("%s: dispatching to work pool %s", stage, pool)
    run = run_deployment(f"{stage}/{stage}-adhoc", timeout=None, poll_interval=2, parameters={
        "config": config.model_dump(mode="json"), "force": False,
        **{f"{name}_uri": out.uri for name, out in upstream.items()}})
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
             f"(alias `{config.tracking.alias}`).", "",
             "| stage | cached | output | key metrics |", "|---|---|---|---|"]
    for name, out in outputs.items():
        shown = ", ".join(f"{k}={v:.4g}" for k, v in out.metrics.items()
                          if k.startswith(("eval/", "rows/", "policy/", "sft/gold", "sft/score")))
        lines.append(f"| {name} | {'yes' if out.cached else 'no'} | `{out.uri}` | {shown} |")
    return "\n".join(lines) + "\n"


def _single(config: PipelineConfig, stage: str, run_name: str, force: bool = True):
    return open_context(config, run_name, {stage} if force else set())


@flow(name="sft")
def sft_flow(config: PipelineConfig, data_uri: str, force: bool = True) -> StageOutput:
    """Rerun SFT alone on a stored data prep output (`force=False`: reuse a stored output with the same key)."""
    ctx = _single(config, "sft", f"{config.name}-sft", force)
    out = sft_task(config.sft, config.data.max_length, load_output(ctx.store, data_uri), ctx)
    ctx.tracker.finish(ctx.parent_run_id)
    return out


@flow(name="reward")
def reward_flow(config: PipelineConfig, data_uri: str, sft_uri: str, force: bool = True) -> StageOutput:
    """Rerun the reward model alone on stored data prep and SFT outputs (`force=False`: reuse if stored)."""
    ctx = _single(config, "reward", f"{config.name}-reward", force)
    out = reward_task(config.reward, config.data.max_length, load_output(ctx.store, data_uri),
                      load_output(ctx.store, sft_uri), ctx)
    ctx.tracker.finish(ctx.parent_run_id)
    return out


@flow(name="ppo")
def ppo_flow(config: PipelineConfig, data_uri: str, sft_uri: str, reward_uri: str,
             force: bool = True) -> StageOutput:
    """Rerun PPO alone on stored data prep, SFT and reward model outputs (`force=False`: reuse if stored)."""
    ctx = _single(config, "ppo", f"{config.name}-ppo", force)
    out = ppo_task(config.ppo, config.data.max_length, config.gold_fn, *(load_output(ctx.store, u) for u in
                                                                          (data_uri, sft_uri, reward_uri)), ctx)
    ctx.tracker.finish(ctx.parent_run_id)
    return out


@flow(name="evaluate")
def evaluate_flow(config: PipelineConfig, data_uri: str, sft_uri: str, reward_uri: str, ppo_uri: str) -> StageOutput:
    """Rerun the evaluation alone on stored outputs."""
    ctx = _single(config, "evaluate", f"{config.name}-evaluate")
    out = evaluate_task(config.evaluate, config.data.max_length, config.gold_fn, config.ppo.reward_model,
                        *(load_output(ctx.store, u) for u in (data_uri, sft_uri, reward_uri, ppo_uri)), None, ctx)
    ctx.tracker.finish(ctx.parent_run_id)
    return out
