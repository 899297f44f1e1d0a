"""Feedback tasks: make pairs for people to judge, and store their labels as a versioned preference dataset."""
from __future__ import annotations

import hashlib
import json

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from components.config.base import StrictModel
from tasks.output import StageOutput
from tasks.runner import RunContext, execute

VERSION = "1"


class LabelSet(StrictModel):
    """What identifies a label dataset: where it came from and a hash of its records (the cache 'config')."""

    origin: str = Field(description="The feedback flow run or the imported file.")
    content: str = Field(description="sha256 of the preference records.")


@task(name="make-pairs", cache_policy=NO_CACHE)
def pairs_task(data: StageOutput, policy: StageOutput, baseline: StageOutput | None, n: int, seed: int,
               ctx: RunContext) -> list[dict]:
    from components.feedback.pairs import make_pairs

    fetch = ctx.store.fetch
    return make_pairs(fetch("data", data.cache_key), fetch(policy.stage, policy.cache_key),
                      fetch(baseline.stage, baseline.cache_key) if baseline else None, n, seed)


@task(name="store-labels", cache_policy=NO_CACHE)
def labels_task(records: list[dict], counts: dict[str, int], origin: str, ctx: RunContext) -> StageOutput | None:
    """Store the records under stage `feedback` with an MLflow run (counts as metrics); None if there are none."""
    ctx.tracker.logger(ctx.parent_run_id)(0, {f"feedback/{k}": float(v) for k, v in counts.items()})
    if not records:
        ctx.tracker.tag(ctx.parent_run_id, {"rlhf.feedback": "no usable labels"})
        return None
    content = hashlib.sha256("".join(json.dumps(r, sort_keys=True) for r in records).encode()).hexdigest()

    def compute(inputs, out, stage_run):
        from components.feedback.labels import write_dataset

        write_dataset(records, counts, origin, out)
        return {f"labels/{k}": float(v) for k, v in counts.items()}

    return execute("feedback", VERSION, LabelSet(origin=origin, content=content), {}, compute, ctx)


@task(name="labels-from-answers", cache_policy=NO_CACHE)
def labels_from_answers_task(pairs: list[dict], answers: list[dict]) -> tuple[list[dict], dict[str, int]]:
    from components.feedback.labels import labels_from_answers

    return labels_from_answers(pairs, answers)


@task(name="read-labels", cache_policy=NO_CACHE)
def read_labels_task(path: str, ctx: RunContext) -> tuple[list[dict], dict[str, int]]:
    from components.feedback.labels import read_label_file

    return read_label_file(path, ctx.store.cache_dir)
