"""The part every stage task shares: the cache check, the stage's MLflow run, and storing its output.

A stage is reused when the store holds a complete, verified output under its cache key; otherwise it runs into
a fresh work directory, and only a finished output is stored (marker last). A failed stage leaves no complete
output behind and its MLflow run is marked FAILED. What a failure would throw away is kept instead:
- a training stage's checkpoints live in the store under `<stage>/<key>/_partial/` until its output is stored,
  so a rerun (a Prefect retry, a replacement worker) resumes from the last one;
- an output that finished but could not be stored (an S3 outage) stays in the work directory with a
  `<key>.finished.json` beside it, and the rerun stores it instead of training again.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.compute.memory import PeakRSS, release_freed
from components.config.placement import StagePlacement
from components.io.locks import file_lock, lock_dir
from components.io.partial import PartialCheckpoints
from components.io.store import ArtifactStore, StoreError, describe
from components.stage import Hooks
from tasks import termination
from tasks.output import StageOutput, cache_key
from tasks.tracking import Tracker, flatten

log = logging.getLogger("rlhf")


@dataclass
class StageRun:
    """The executing stage's MLflow run and checkpoints, handed to its compute function."""

    run_id: str
    tracker: Tracker
    partial: PartialCheckpoints | None = None  # kept when the stage fails, so its rerun resumes; dropped once stored

    @property
    def checkpoints(self) -> Path | None:
        """The local checkpoint directory the stage saves into and resumes from."""
        return self.partial.local if self.partial else None

    @property
    def on_log(self):
        """Logs a training step's metrics into the stage's run (and stops here after a SIGTERM)."""
        log_metrics = self.tracker.logger(self.run_id)

        def logged(step: int, metrics: dict[str, float]) -> None:
            termination.check()
            log_metrics(step, metrics)
        return logged

    def hooks(self) -> Hooks:
        """The stage's hooks in this process: its MLflow run, its checkpoints in the store, SIGTERM as the stop
        check, and the report as Prefect artifacts."""
        tracker, run_id = self.tracker, self.run_id
        return Hooks(on_log=tracker.logger(run_id), stop=termination.check,
                     on_samples=lambda it, rows: tracker.log_table(run_id, rows, f"samples/iteration_{it:05d}.json"),
                     on_checkpoint=self.partial.save if self.partial else (lambda: None),
                     checkpoint_dir=self.checkpoints, tag=lambda tags: tracker.tag(run_id, tags),
                     log_table=lambda rows, name: tracker.log_table(run_id, rows, name),
                     log_artifact=lambda path, where: tracker.client.log_artifact(run_id, str(path), where),
                     log_text=lambda name, text: tracker.log_file(run_id, name, text), report=prefect_report)


def prefect_report(key: str, markdown: str, metrics: dict[str, float]) -> None:
    """A stage's report as Prefect artifacts: the markdown and a table of its metrics."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(markdown, key=f"rlhf-{key}", description=f"{key.capitalize()} report")
    create_table_artifact([{"metric": k, "value": round(v, 4)} for k, v in sorted(metrics.items())],
                          key=f"rlhf-{key}-metrics", description=f"{key.capitalize()} metrics")


Compute = Callable[[dict[str, Path], Path, StageRun], dict[str, float]]


@dataclass
class RunContext:
    """What every task of one pipeline run needs besides its config: where outputs go, where runs are logged."""

    store: ArtifactStore
    tracker: Tracker
    parent_run_id: str
    work_dir: Path
    force: set[str] = field(default_factory=set)


def execute(stage: str, version: str, config: Any, parents: dict[str, StageOutput], compute: Compute,
            ctx: RunContext, extra_hash: dict[str, Any] | None = None,
            placement: StagePlacement | None = None) -> StageOutput:
    """Run `compute(inputs, out_dir, stage_run) -> metrics` unless a verified output with the same cache key is
    stored. `inputs` maps upstream names to local directories; `config` (a StrictModel) and `extra_hash`
    (other settings the stage reads, e.g. data.max_length) make up the config hash. `placement` is where it runs:
    the concurrency slots held while it computes (never part of the key)."""
    termination.check()
    config_hash = _hash(config, extra_hash)
    fingerprints = {name: out.fingerprint for name, out in parents.items()}
    key = cache_key(stage, version, config_hash, fingerprints)
    if stage not in ctx.force and (stored := _cached(stage, key, ctx)):
        return stored
    # one writer per output: a second pipeline needing it waits here, then reuses what the first one stored
    with file_lock(lock_dir(ctx.store.root) / f"{stage}-{key}.lock", f"{stage} output {key}"):
        if stage not in ctx.force and (stored := _cached(stage, key, ctx)):
            return stored
        return _run(stage, version, config, config_hash, parents, key, compute, ctx, extra_hash, placement)


def _cached(stage: str, key: str, ctx: RunContext) -> StageOutput | None:
    marker = ctx.store.verified(stage, key)
    if marker is None:
        return None
    log.info("== %s: cached (%s)", stage, ctx.store.uri(stage, key))
    ctx.tracker.tag(ctx.parent_run_id, {f"stage.{stage}": "cached",
                                        f"stage.{stage}.run_id": marker.get("mlflow_run_id") or ""})
    return _output(ctx.store, marker, cached=True)


def _run(stage: str, version: str, config: Any, config_hash: str, parents: dict[str, StageOutput], key: str,
         compute: Compute, ctx: RunContext, extra_hash: dict[str, Any] | None,
         placement: StagePlacement | None) -> StageOutput:
    """Compute (or, when a finished output waits unstored, just store) the output (stage, key); holds its lock."""
    fingerprints = {name: out.fingerprint for name, out in parents.items()}
    work = ctx.work_dir / stage / key
    finished = work.with_name(f"{key}.finished.json")  # the output in `work` is complete and not yet stored
    partial = PartialCheckpoints(ctx.store, stage, key, ctx.work_dir / "_partial" / stage / key)
    meta = _finished(work, finished)  # with "files": the output's sha256s, hashed once (put needs them too)
    if meta is not None:
        log.info("== %s: trained before, not stored yet: storing it (%s)", stage, work)
        run_id = meta["mlflow_run_id"]
    else:
        log.info("== %s", stage)
        inputs = {name: ctx.store.fetch(out.stage, out.cache_key) for name, out in parents.items()}
        params = {**flatten(config.model_dump(mode="json")), **flatten(extra_hash or {})}
        run_id = ctx.tracker.start_run(stage, params, {"rlhf.stage": stage, "rlhf.cache_key": key,
                                                       "rlhf.stage_version": version}, parent=ctx.parent_run_id)
    try:
        if meta is None:
            meta = _compute(stage, compute, inputs, work, StageRun(run_id, ctx.tracker, partial), placement, ctx)
            meta.update(version=version, config_hash=config_hash, parents=fingerprints, mlflow_run_id=run_id,
                        files=describe(work))
            finished.write_text(json.dumps(meta))
        files = meta.pop("files")
        marker = ctx.store.put(work, stage, key, meta, files)
    except BaseException:
        ctx.tracker.finish(run_id, ok=False)
        raise
    ctx.tracker.tag(run_id, {"rlhf.uri": ctx.store.uri(stage, key), "rlhf.fingerprint": marker["fingerprint"]})
    ctx.tracker.tag(ctx.parent_run_id, {f"stage.{stage}": "ran", f"stage.{stage}.run_id": run_id})
    ctx.tracker.finish(run_id)
    finished.unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    partial.drop()
    return _output(ctx.store, marker, cached=False)


def _compute(stage: str, compute: Compute, inputs: dict[str, Path], work: Path, stage_run: StageRun,
             placement: StagePlacement | None, ctx: RunContext) -> dict[str, Any]:
    """Run the stage into a fresh `work` (resuming from its stored checkpoint when there is one); its metadata."""
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    if stage_run.partial.restore():
        log.info("%s: resuming from the checkpoint in %s", stage, stage_run.partial.uri)
        ctx.tracker.tag(stage_run.run_id, {"rlhf.resumed_from": stage_run.partial.uri})
    with _slots(placement), PeakRSS() as memory, ctx.tracker.system_metrics(stage_run.run_id):
        started = time.perf_counter()
        try:
            metrics = compute(inputs, work, stage_run)
        finally:
            release_freed()  # what the stage freed goes back to the OS, not to the next stage's peak
    stage_stats = {f"{stage}/seconds": time.perf_counter() - started,  # compute only: what overhead is measured on
                   f"{stage}/peak_rss_mb": memory.peak_mb}  # this process and its children (torchrun ranks)
    stage_run.on_log(0, stage_stats)
    return {"metrics": {k: float(v) for k, v in {**metrics, **stage_stats}.items() if isinstance(v, (int, float))}}


def _finished(work: Path, finished: Path) -> dict[str, Any] | None:
    """The metadata of a finished, unstored output in `work` when its files are still exactly as they were."""
    if not finished.is_file():
        return None
    meta = json.loads(finished.read_text())
    if not work.is_dir() or describe(work) != meta["files"]:
        finished.unlink()
        return None
    return meta


def _slots(placement: StagePlacement | None):
    """Hold `placement.num_processes` slots of the Prefect global concurrency limit `placement.concurrency_limit`
    (strict: a limit that does not exist on the server is an error, not a silent pass)."""
    if placement is None or placement.concurrency_limit is None:
        return contextlib.nullcontext()
    from prefect.concurrency.sync import concurrency

    return concurrency(placement.concurrency_limit, occupy=placement.num_processes, strict=True)


def load_output(store: ArtifactStore, uri: str) -> StageOutput:
    """The StageOutput of a stored output, from its URI (`<root>/<stage>/<cache_key>`), for stage-alone flows."""
    stage, key = uri.rstrip("/").split("/")[-2:]
    marker = store.verified(stage, key)
    if marker is None:
        raise StoreError(f"{uri}: no complete, verified stage output there")
    return _output(store, marker, cached=True)


def _output(store: ArtifactStore, marker: dict, cached: bool) -> StageOutput:
    return StageOutput(stage=marker["stage"], uri=store.uri(marker["stage"], marker["cache_key"]),
                       fingerprint=marker["fingerprint"], config_hash=marker["config_hash"],
                       cache_key=marker["cache_key"], parents=marker["parents"],
                       mlflow_run_id=marker.get("mlflow_run_id"), metrics=marker.get("metrics", {}), cached=cached)


def _hash(config: Any, extra: dict[str, Any] | None) -> str:
    import hashlib

    dumped = config.model_dump(mode="json")  # placement is not in a stage's config: it never reaches the key
    dumped.pop("checkpoint_every", None)  # nor how often it checkpoints: a resumed run ends as an uninterrupted one
    blob = json.dumps({"config": dumped, "extra": extra or {}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
