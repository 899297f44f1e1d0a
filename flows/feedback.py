"""The human feedback flow: pairs of responses, a typed form in the Prefect UI, labels stored as a dataset."""
from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field

from components.config.pipeline import PipelineConfig
from tasks.context import open_context
from tasks.feedback import labels_from_answers_task, labels_task, pairs_task, read_labels_task
from tasks.output import StageOutput
from tasks.runner import load_output


class PairChoice(BaseModel):
    pair: int = Field(description="Pair number, as listed above.")
    choice: Literal["A", "B", "tie", "skip"] = Field("skip", description="The better response; skip if unsure.")
    score: int | None = Field(None, ge=1, le=5, description="Optional quality of the better response, 1-5.")


class FeedbackForm(RunInput):
    """One choice per pair; pairs left at `skip` are dropped and counted."""

    choices: list[PairChoice]


def describe(pairs: list[dict]) -> str:
    lines = ["**Which response is better?** Pick A, B or tie for each pair (skip if unsure).", ""]
    for p in pairs:
        lines += [f"**Pair {p['pair']}** - {p['prompt']}", f"- A: {p['response_a']}", f"- B: {p['response_b']}", ""]
    return "\n".join(lines)


@flow(name="feedback")
def feedback_flow(config: PipelineConfig, data_uri: str, policy_uri: str, baseline_uri: str | None = None,
                  n_pairs: int = 8, timeout_s: int = 3600, seed: int = 0) -> StageOutput | None:
    """Sample `n_pairs` pairs (two policy samples, or policy vs `baseline_uri`), wait for a person's choices in
    the UI, and store the labels as a versioned preference dataset (stage `feedback`). Returns its StageOutput,
    or None when nobody answered in `timeout_s` or every answer was a tie."""
    ctx = open_context(config, f"{config.name}-feedback", set())
    data, policy = load_output(ctx.store, data_uri), load_output(ctx.store, policy_uri)
    baseline = load_output(ctx.store, baseline_uri) if baseline_uri else None
    pairs = pairs_task(data, policy, baseline, n_pairs, seed, ctx)
    form = FeedbackForm.with_initial_data(description=describe(pairs),
                                          choices=[PairChoice(pair=p["pair"]) for p in pairs])
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=2, key="feedback")
        choices = [c.model_dump() for c in answer.choices]
    except FlowPauseTimeout:
        get_run_logger().warning("no answer within %ss; every pair counts as unanswered", timeout_s)
        choices = []
    records, counts = labels_from_answers_task(pairs, choices)
    out = labels_task(records, counts, f"feedback flow run {ctx.parent_run_id}", ctx)
    ctx.tracker.finish(ctx.parent_run_id)
    get_run_logger().info("feedback: %s", counts)
    return out


@flow(name="feedback-import")
def import_feedback_flow(config: PipelineConfig, path: str) -> StageOutput | None:
    """Validate a label file (JSONL or CSV) and store it like the feedback flow's labels."""
    ctx = open_context(config, f"{config.name}-feedback-import", set())
    records, counts = read_labels_task(path, ctx)
    out = labels_task(records, counts, f"import {path}", ctx)
    ctx.tracker.finish(ctx.parent_run_id)
    return out
