"""Prefect flows: the whole chain, and one flow per stage that starts from stored upstream outputs."""
from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from components.config.pipeline import PipelineConfig
from components.io.store import ArtifactStore
from tasks.output import StageOutput
from tasks.runner import RunContext, load_output
from tasks.stages import data_task, ppo_task, register_task, reward_task, sft_task
from tasks.tracking import Tracker, default_tracking_uri, flatten

STAGES = ("data", "sft", "reward", "ppo")


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


@flow(name="rlhf-pipeline", log_prints=True)
def rlhf_pipeline(config: PipelineConfig, force: list[str] | None = None,
                  from_stage: str | None = None) -> dict[str, StageOutput]:
    """data prep -> SFT -> reward model -> PPO, each stage cached by config hash + upstream fingerprints +
    stage version; the PPO policy is registered in MLflow with the `candidate` alias."""
    start = time.perf_counter()
    ctx = open_context(config, f"{config.name}-pipeline", set(force or []) | stages_from(from_stage))
    try:
        outputs = {"data": data_task(config.data, ctx)}
        outputs["sft"] = sft_task(config.sft, config.data.max_length, outputs["data"], ctx)
        outputs["reward"] = reward_task(config.reward, config.data.max_length, outputs["data"], outputs["sft"], ctx)
        outputs["ppo"] = ppo_task(config.ppo, config.data, outputs["data"], outputs["sft"], outputs["reward"], ctx)
        version = register_task(outputs["ppo"], config.tracking.model_name or f"{config.name}-policy",
                                config.tracking.alias, ctx)
    except BaseException:
        ctx.tracker.finish(ctx.parent_run_id, ok=False)
        raise
    seconds = time.perf_counter() - start
    ctx.tracker.logger(ctx.parent_run_id)(0, {"pipeline/seconds": seconds, **{
        f"{name}/{k}": v for name, out in outputs.items() for k, v in out.metrics.items() if k.startswith("eval")}})
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
                          if k.startswith(("eval/", "eval_before/gold", "rows/")))
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
