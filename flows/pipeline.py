"""Prefect flows: the whole chain, and one flow per stage that starts from stored upstream outputs."""
from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from components.config.pipeline import PipelineConfig
from tasks.context import open_context, stages_from
from tasks.output import StageOutput
from tasks.runner import RunContext, load_output
from tasks.stages import data_task, evaluate_task, ppo_task, register_task, reward_task, sft_task


@flow(name="rlhf-pipeline", log_prints=True)
def rlhf_pipeline(config: PipelineConfig, force: list[str] | None = None,
                  from_stage: str | None = None) -> dict[str, StageOutput]:
    """data prep -> SFT -> reward model -> PPO -> evaluation, each stage cached by config hash + upstream fingerprints +
    stage version; the PPO policy is registered in MLflow with the `candidate` alias."""
    start = time.perf_counter()
    ctx = open_context(config, f"{config.name}-pipeline", set(force or []) | stages_from(from_stage))
    try:
        outputs = {"data": data_task(config.data, ctx)}
        outputs["sft"] = sft_task(config.sft, config.data.max_length, outputs["data"], ctx)
        outputs["reward"] = reward_task(config.reward, config.data.max_length, outputs["data"], outputs["sft"], ctx)
        outputs["ppo"] = ppo_task(config.ppo, config.data, outputs["data"], outputs["sft"], outputs["reward"], ctx)
        outputs["evaluate"] = evaluate_task(config.evaluate, config.data, outputs["data"], outputs["sft"],
                                            outputs["reward"], outputs["ppo"], ctx)
        version = register_task(outputs["ppo"], config.tracking.model_name or f"{config.name}-policy",
                                config.tracking.alias, ctx)
    except BaseException:
        ctx.tracker.finish(ctx.parent_run_id, ok=False)
        raise
    seconds = time.perf_counter() - start
    ctx.tracker.logger(ctx.parent_run_id)(0, {"pipeline/seconds": seconds, **{
        f"{name}/{k}": v for name, out in outputs.items() for k, v in out.metrics.items()
        if k.startswith("eval") or name == "evaluate"}})
    ctx.tracker.finish(ctx.parent_run_id)
    summary = summarize(config, outputs, ctx, version, seconds)
    create_markdown_artifact(summary, key="rlhf-pipeline-summary", description="Stages, caching, metrics")
    get_run_logger().info("pipeline finished in %.1fs; MLflow run %s", seconds, ctx.parent_run_id)
    return outputs


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


def _single(config: PipelineConfig, stage: str, run_name: str):
    return open_context(config, run_name, {stage})


@flow(name="sft")
def sft_flow(config: PipelineConfig, data_uri: str) -> StageOutput:
    """Rerun SFT alone on a stored data prep output."""
    ctx = _single(config, "sft", f"{config.name}-sft")
    out = sft_task(config.sft, config.data.max_length, load_output(ctx.store, data_uri), ctx)
    ctx.tracker.finish(ctx.parent_run_id)
    return out


@flow(name="reward")
def reward_flow(config: PipelineConfig, data_uri: str, sft_uri: str) -> StageOutput:
    """Rerun the reward model alone on stored data prep and SFT outputs."""
    ctx = _single(config, "reward", f"{config.name}-reward")
    out = reward_task(config.reward, config.data.max_length, load_output(ctx.store, data_uri),
                      load_output(ctx.store, sft_uri), ctx)
    ctx.tracker.finish(ctx.parent_run_id)
    return out


@flow(name="ppo")
def ppo_flow(config: PipelineConfig, data_uri: str, sft_uri: str, reward_uri: str) -> StageOutput:
    """Rerun PPO alone on stored data prep, SFT and reward model outputs."""
    ctx = _single(config, "ppo", f"{config.name}-ppo")
    out = ppo_task(config.ppo, config.data, load_output(ctx.store, data_uri), load_output(ctx.store, sft_uri),
                   load_output(ctx.store, reward_uri), ctx)
    ctx.tracker.finish(ctx.parent_run_id)
    return out


@flow(name="evaluate")
def evaluate_flow(config: PipelineConfig, data_uri: str, sft_uri: str, reward_uri: str, ppo_uri: str) -> StageOutput:
    """Rerun the evaluation alone on stored outputs."""
    ctx = _single(config, "evaluate", f"{config.name}-evaluate")
    out = evaluate_task(config.evaluate, config.data, *(load_output(ctx.store, u) for u in
                                                        (data_uri, sft_uri, reward_uri, ppo_uri)), ctx)
    ctx.tracker.finish(ctx.parent_run_id)
    return out
