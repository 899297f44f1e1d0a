"""The human feedback flow: pairs of responses, a form in the Prefect UI, labels stored as a dataset; storing one
emits the `rlhf.feedback.stored` event that the retraining deployment's trigger turns into a retraining run."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run

from components.config.pipeline import PipelineConfig
from flows.forms import answers, feedback_form
from flows.pipeline import Preset, run_stage, upstream_of
from tasks.context import open_context, resolve_config
from tasks.feedback import labels_from_answers_task, labels_task, pairs_task, read_labels_task
from tasks.output import StageOutput
from tasks.runner import RunContext, load_output

EVENT = "rlhf.feedback.stored"


@flow(name="feedback")
def feedback_flow(config: PipelineConfig, data_uri: str | None = None, policy_uri: str | None = None,
                  baseline_uri: str | None = None, n_pairs: int = 4, timeout_s: int = 3600, seed: int = 0,
                  preset: Preset | None = None, overrides: list[str] | None = None) -> StageOutput | None:
    """Sample pairs of responses, wait for a person's choices in the UI, store the labels as a versioned preference
    dataset (stage `feedback`). Returns its StageOutput, or None when nobody answered or every answer was a tie.

    Args:
        config: The pipeline config (the deployment's default is configs/demo.yaml).
        data_uri: A stored data output whose held-out prompts are used; empty: this config's own.
        policy_uri: The stored policy (e.g. a PPO output) that writes response A or B; empty: this config's own
            output of its first policy stage (`policies`).
        baseline_uri: A stored model to compare the policy with (e.g. the SFT output); empty: two policy samples.
        n_pairs: Pairs to judge in one form (4 fit a screen).
        timeout_s: How long the run waits for the form; unanswered pairs are dropped and counted.
        seed: Seed for the prompts drawn and the A/B order.
        preset: Start from configs/{preset}.yaml instead of `config`.
        overrides: Dotted KEY=VALUE lines applied on top of the config.
    """
    config = resolve_config(config, preset, overrides)
    ctx = open_context(config, f"{config.name}-feedback", set())
    with ctx.tracker.finishing(ctx.parent_run_id):
        data = load_output(ctx.store, data_uri) if data_uri else run_stage("data", config, {}, ctx)
        first = config.policies[0]  # the config's first policy stage (ppo by default)
        policy = (load_output(ctx.store, policy_uri) if policy_uri else
                  run_stage(first, config, upstream_of(first, config, ctx, data_uri=data.uri), ctx))
        baseline = load_output(ctx.store, baseline_uri) if baseline_uri else None
        pairs = pairs_task(data, policy, baseline, n_pairs, seed, ctx)
        form = feedback_form(pairs)
        try:
            answer = pause_flow_run(wait_for_input=form.with_initial_data(
                description=f"**Which response is better?** {len(pairs)} pairs below; pick A, B or tie for each "
                            "(skip if unsure), then Submit."), timeout=timeout_s, poll_interval=2, key="feedback")
            choices = answers(answer, pairs)
        except FlowPauseTimeout:
            get_run_logger().warning("no answer within %ss; every pair counts as unanswered", timeout_s)
            choices = []
        records, counts = labels_from_answers_task(pairs, choices)
        out = labels_task(records, counts, f"feedback flow run {ctx.parent_run_id}", ctx)
    return announce(config, out, counts, ctx)


@flow(name="feedback-import")
def import_feedback_flow(config: PipelineConfig, path: str) -> StageOutput | None:
    """Validate a label file (JSONL or CSV) and store it like the feedback flow's labels.

    Args:
        config: The pipeline config (the deployment's default is configs/demo.yaml).
        path: The label file: prompt, chosen, rejected (or response_a, response_b, choice) per row.
    """
    ctx = open_context(config, f"{config.name}-feedback-import", set())
    with ctx.tracker.finishing(ctx.parent_run_id):
        records, counts = read_labels_task(path, ctx)
        out = labels_task(records, counts, f"import {path}", ctx)
    return announce(config, out, counts, ctx)


def announce(config: PipelineConfig, out: StageOutput | None, counts: dict[str, int],
             ctx: RunContext) -> StageOutput | None:
    """Say where the labels went and how to use them (log and a Prefect artifact), and emit the event."""
    shown = ", ".join(f"{k} {v}" for k, v in counts.items())
    if out is None:
        text = f"# Feedback: nothing stored\n\nNo usable labels ({shown}).\n"
        get_run_logger().warning("feedback: nothing stored (%s)", shown)
    else:
        line = f"reward.feedback=[{', '.join([*config.reward.feedback, out.uri])}]"
        text = (f"# Feedback stored\n\nDataset: `{out.uri}`\n\nCounts: {shown}.\n\nRetrain the reward model on it: "
                f"add it to the config's `reward.feedback`, or pass the override\n\n```\n{line}\n```\n\n"
                f"(`rlhf run --set '{line}'`). The `{EVENT}` event was emitted; the retrain-on-feedback trigger "
                "starts a retraining run with it.\n")
        get_run_logger().info("feedback stored at %s (%s); to retrain with it: %s", out.uri, shown, line)
        emit_event(event=EVENT, resource={"prefect.resource.id": f"rlhf.feedback.{out.cache_key}",
                                          "prefect.resource.name": out.uri, "rlhf.pipeline": config.name},
                   payload={"uri": out.uri, "counts": counts, "mlflow_run_id": ctx.parent_run_id})
    create_markdown_artifact(text, key="rlhf-feedback", description="The stored feedback dataset and how to use it")
    return out
