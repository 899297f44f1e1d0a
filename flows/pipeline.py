"""Prefect flows: the whole chain, and one flow per stage that starts from stored upstream outputs.

Every flow's parameters have defaults the Prefect UI's Run button can send as they are: `config` comes from the
deployment (prefect.yaml), `preset`/`overrides` spare editing the config's fields, and an upstream URI left empty
means "this config's stored output of that stage" (computed, and cached, when it is missing)."""
from __future__ import annotations

import time
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from components.config.pipeline import PipelineConfig
from flows.forms import Approval
from tasks.context import open_context, resolve_config, stages_from
from tasks.output import StageOutput
from tasks.runner import RunContext, load_output
from tasks.tracking import is_key_metric
from tasks.stages import (champion_task, data_task, dpo_task, es_task, evaluate_task, gate_task, ppo_task, promote_task,
                          register_task, reward_task, sft_task)

Stage = Literal["data", "sft", "reward", "ppo", "dpo", "es", "evaluate"]
Preset = Literal["demo", "grpo", "tiny", "smollm2"]  # configs/*.yaml (a unit test keeps them in step)


@flow(name="rlhf-pipeline", log_prints=True)
def rlhf_pipeline(config: PipelineConfig, force: list[Stage] | None = None, from_stage: Stage | None = None,
                  preset: Preset | None = None, overrides: list[str] | None = None,
                  feedback_uri: str | None = None) -> dict[str, StageOutput]:
    """data prep -> SFT -> reward model -> PPO and/or DPO (`policies`) -> evaluation, each stage cached by config hash +
    upstream fingerprints + stage version; the best trained policy is registered in MLflow with the `candidate` alias.

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
        for stage in config.stages[:-1]:
            on_pool(config, stage, ctx, **outputs)
            outputs[stage] = run_stage(stage, config, outputs, ctx)
        model_name = config.tracking.model_name or f"{config.name}-policy"
        champion = champion_task(model_name, ctx)
        outputs["evaluate"] = run_stage("evaluate", config, outputs, ctx, champion)
        p, policies = config.promotion, {name: outputs[name] for name in config.policies}
        decision = gate_task(outputs["evaluate"], policies, champion, config.promotion_metric, p)
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
    """One stage's task on its upstream outputs (the single place that knows each task's arguments)."""
    n = config.data.max_length
    if stage == "data":
        return data_task(config.data, ctx)
    if stage == "sft":
        return sft_task(config.sft, n, upstream["data"], ctx)
    if stage == "reward":
        return reward_task(config.reward, n, upstream["data"], upstream["sft"], ctx)
    if stage == "ppo":
        return ppo_task(config.ppo, n, config.gold_fn, upstream["data"], upstream["sft"],
                        upstream["reward"] if "reward" in config.upstream("ppo") else None, ctx)
    if stage == "dpo":
        return dpo_task(config.dpo, n, upstream["data"], upstream["sft"], ctx)
    if stage == "es":
        return es_task(config.es, config.gold_fn, upstream["data"], upstream["sft"],
                       upstream["reward"] if "reward" in config.upstream("es") else None, ctx)
    return evaluate_task(config.evaluate, n, config.gold_fn, config.ppo.reward_model, config.promotion_metric,
                         upstream["data"], upstream["sft"], upstream["reward"],
                         {name: upstream[name] for name in config.policies}, champion, ctx)


def upstream_of(stage: str, config: PipelineConfig, ctx: RunContext, **uris: str | None) -> dict[str, StageOutput]:
    """What `stage` needs: each given `<name>_uri` loaded from the store, the others this config's (cached) outputs."""
    outputs: dict[str, StageOutput] = {}
    for name in config.upstream(stage):
        uri = uris.get(f"{name}_uri")
        outputs[name] = load_output(ctx.store, uri) if uri else run_stage(name, config, outputs, ctx)
    return outputs


def on_pool(config: PipelineConfig, stage: str, ctx: RunContext, **upstream: StageOutput) -> None:
    """When the stage's `compute.work_pool` is set, run its `<stage>-adhoc` deployment there first (as a
    subflow, waiting for it) without forcing; the local task call that follows then finds the stored output."""
    compute = getattr(getattr(config, stage), "compute", None)  # data prep has none
    pool = compute.work_pool if compute else None
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


def _stage_alone(stage: str, config: PipelineConfig, force: bool, preset: Preset | None, overrides: list[str] | None,
                 **uris: str | None) -> StageOutput:
    config = resolve_config(config, preset, overrides)
    ctx = open_context(config, f"{config.name}-{stage}", {stage} if force else set())
    with ctx.tracker.finishing(ctx.parent_run_id):
        return run_stage(stage, config, upstream_of(stage, config, ctx, **uris), ctx)


# Prefect reads each flow's `Args:` docstring section into the descriptions of the UI's Run form.

@flow(name="sft")
def sft_flow(config: PipelineConfig, data_uri: str | None = None, force: bool = True, preset: Preset | None = None,
             overrides: list[str] | None = None) -> StageOutput:
    """Rerun SFT alone on a stored data prep output.

    Args:
        config: The pipeline config (the deployment's default is configs/demo.yaml).
        data_uri: A stored data output (s3://... or a path, as `rlhf runs` lists); empty: this config's own.
        force: Recompute the stage even when a stored output with the same cache key exists.
        preset: Start from configs/{preset}.yaml instead of `config`.
        overrides: Dotted KEY=VALUE lines applied on top, e.g. sft.lr=2e-5 or sft.epochs=1.
    """
    return _stage_alone("sft", config, force, preset, overrides, data_uri=data_uri)


@flow(name="reward")
def reward_flow(config: PipelineConfig, data_uri: str | None = None, sft_uri: str | None = None, force: bool = True,
                preset: Preset | None = None, overrides: list[str] | None = None) -> StageOutput:
    """Rerun the reward model alone on stored data prep and SFT outputs.

    Args:
        config: The pipeline config (the deployment's default is configs/demo.yaml).
        data_uri: A stored data output (s3://... or a path, as `rlhf runs` lists); empty: this config's own.
        sft_uri: A stored SFT output; empty: this config's own (computed and cached when missing).
        force: Recompute the stage even when a stored output with the same cache key exists.
        preset: Start from configs/{preset}.yaml instead of `config`.
        overrides: Dotted KEY=VALUE lines applied on top, e.g. reward.lr=1e-4 or reward.epochs=1.
    """
    return _stage_alone("reward", config, force, preset, overrides, data_uri=data_uri, sft_uri=sft_uri)


@flow(name="ppo")
def ppo_flow(config: PipelineConfig, data_uri: str | None = None, sft_uri: str | None = None,
             reward_uri: str | None = None, force: bool = True, preset: Preset | None = None,
             overrides: list[str] | None = None) -> StageOutput:
    """Rerun PPO alone on stored data prep, SFT and reward model outputs.

    Args:
        config: The pipeline config (the deployment's default is configs/demo.yaml).
        data_uri: A stored data output (s3://... or a path, as `rlhf runs` lists); empty: this config's own.
        sft_uri: A stored SFT output; empty: this config's own (computed and cached when missing).
        reward_uri: A stored reward model output; empty: this config's own (computed and cached when missing).
        force: Recompute the stage even when a stored output with the same cache key exists.
        preset: Start from configs/{preset}.yaml instead of `config`.
        overrides: Dotted KEY=VALUE lines applied on top, e.g. ppo.iterations=100.
    """
    return _stage_alone("ppo", config, force, preset, overrides, data_uri=data_uri, sft_uri=sft_uri,
                        reward_uri=reward_uri)


@flow(name="dpo")
def dpo_flow(config: PipelineConfig, data_uri: str | None = None, sft_uri: str | None = None, force: bool = True,
             preset: Preset | None = None, overrides: list[str] | None = None) -> StageOutput:
    """Rerun DPO alone on stored data prep and SFT outputs (it needs no reward model).

    Args:
        config: The pipeline config (the deployment's default is configs/demo.yaml).
        data_uri: A stored data output (s3://... or a path, as `rlhf runs` lists); empty: this config's own.
        sft_uri: A stored SFT output; empty: this config's own (computed and cached when missing).
        force: Recompute the stage even when a stored output with the same cache key exists.
        preset: Start from configs/{preset}.yaml instead of `config`.
        overrides: Dotted KEY=VALUE lines applied on top, e.g. dpo.beta=0.2 or dpo.loss_type=ipo.
    """
    return _stage_alone("dpo", config, force, preset, overrides, data_uri=data_uri, sft_uri=sft_uri)


@flow(name="es")
def es_flow(config: PipelineConfig, data_uri: str | None = None, sft_uri: str | None = None,
            reward_uri: str | None = None, force: bool = True, preset: Preset | None = None,
            overrides: list[str] | None = None) -> StageOutput:
    """Rerun evolution strategies alone on stored data prep, SFT and (when es.rewards uses it) reward model outputs.

    Args:
        config: The pipeline config (the deployment's default is configs/demo.yaml).
        data_uri: A stored data output (s3://... or a path, as `rlhf runs` lists); empty: this config's own.
        sft_uri: A stored SFT output; empty: this config's own (computed and cached when missing).
        reward_uri: A stored reward model output; empty: this config's own (computed and cached when missing).
        force: Recompute the stage even when a stored output with the same cache key exists.
        preset: Start from configs/{preset}.yaml instead of `config`.
        overrides: Dotted KEY=VALUE lines applied on top, e.g. es.iterations=100 or es.sigma=0.01.
    """
    return _stage_alone("es", config, force, preset, overrides, data_uri=data_uri, sft_uri=sft_uri,
                        reward_uri=reward_uri)


@flow(name="evaluate")
def evaluate_flow(config: PipelineConfig, data_uri: str | None = None, sft_uri: str | None = None,
                  reward_uri: str | None = None, ppo_uri: str | None = None, dpo_uri: str | None = None,
                  es_uri: str | None = None, force: bool = True, preset: Preset | None = None,
                  overrides: list[str] | None = None) -> StageOutput:
    """Rerun the evaluation alone on stored outputs: each policy the config's `policies` names.

    Args:
        config: The pipeline config (the deployment's default is configs/demo.yaml).
        data_uri: A stored data output (s3://... or a path, as `rlhf runs` lists); empty: this config's own.
        sft_uri: A stored SFT output; empty: this config's own (computed and cached when missing).
        reward_uri: A stored reward model output; empty: this config's own (computed and cached when missing).
        ppo_uri: The stored PPO policy to evaluate; empty: this config's own (computed and cached when missing).
        dpo_uri: The stored DPO policy, when `policies` names dpo; empty: this config's own.
        es_uri: The stored ES policy, when `policies` names es; empty: this config's own.
        force: Recompute the stage even when a stored output with the same cache key exists.
        preset: Start from configs/{preset}.yaml instead of `config`.
        overrides: Dotted KEY=VALUE lines applied on top, e.g. evaluate.samples_per_prompt=8.
    """
    return _stage_alone("evaluate", config, force, preset, overrides, data_uri=data_uri, sft_uri=sft_uri,
                        reward_uri=reward_uri, ppo_uri=ppo_uri, dpo_uri=dpo_uri, es_uri=es_uri)


STAGE_FLOWS = {"sft": sft_flow, "reward": reward_flow, "ppo": ppo_flow, "dpo": dpo_flow, "es": es_flow,
               "evaluate": evaluate_flow}
