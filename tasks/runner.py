"""The part every stage task shares: the cache check, the stage's MLflow run, and storing its output.

A stage is reused when the store holds a complete, verified output under its cache key; otherwise it runs into
a fresh work directory, and only a finished output is stored (marker last). A failed stage leaves no complete
output behind and its MLflow run is marked FAILED.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.compute.memory import PeakRSS
from components.io.store import ArtifactStore, StoreError
from tasks.output import StageOutput, cache_key
from tasks.tracking import Tracker, flatten

log = logging.getLogger("rlhf")


@dataclass
class StageRun:
    """The executing stage's MLflow run and checkpoint directory, handed to its compute function."""

    run_id: str
    tracker: Tracker
    checkpoints: Path | None = None  # kept when the stage fails, so its rerun resumes; removed once it is stored

    @property
    def on_log(self):
        return self.tracker.logger(self.run_id)


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
            ctx: RunContext, extra_hash: dict[str, Any] | None = None) -> StageOutput:
    """Run `compute(inputs, out_dir, stage_run) -> metrics` unless a verified output with the same cache key is
    stored. `inputs` maps upstream names to local directories; `config` (a StrictModel) and `extra_hash`
    (other settings the stage reads, e.g. data.max_length) make up the config hash."""
    config_hash = _hash(config, extra_hash)
    fingerprints = {name: out.fingerprint for name, out in parents.items()}
    key = cache_key(stage, version, config_hash, fingerprints)
    if stage not in ctx.force:
        marker = ctx.store.verified(stage, key)
        if marker is not None:
            log.info("== %s: cached (%s)", stage, ctx.store.uri(stage, key))
            ctx.tracker.tag(ctx.parent_run_id, {f"stage.{stage}": "cached",
                                                f"stage.{stage}.run_id": marker.get("mlflow_run_id") or ""})
            return _output(ctx.store, marker, cached=True)
    log.info("== %s", stage)
    inputs = {name: ctx.store.fetch(out.stage, out.cache_key) for name, out in parents.items()}
    params = {**flatten(config.model_dump(mode="json")), **flatten(extra_hash or {})}
    run_id = ctx.tracker.start_run(stage, params, {"rlhf.stage": stage, "rlhf.cache_key": key,
                                                   "rlhf.stage_version": version}, parent=ctx.parent_run_id)
    work, checkpoints = ctx.work_dir / stage / key, ctx.work_dir / "_partial" / stage / key
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _slots(getattr(config, "compute", None)), PeakRSS() as memory, ctx.tracker.system_metrics(run_id):
            started = time.perf_counter()
            metrics = compute(inputs, work, StageRun(run_id, ctx.tracker, checkpoints))
        stage_stats = {f"{stage}/seconds": time.perf_counter() - started,  # compute only: what overhead is measured on
                       f"{stage}/peak_rss_mb": memory.peak_mb}  # this process and its children (torchrun ranks)
        ctx.tracker.logger(run_id)(0, stage_stats)
        meta = {"version": version, "config_hash": config_hash, "parents": fingerprints, "mlflow_run_id": run_id,
                "metrics": {k: float(v) for k, v in {**metrics, **stage_stats}.items() if isinstance(v, (int, float))}}
        marker = ctx.store.put(work, stage, key, meta)
    except BaseException:
        ctx.tracker.finish(run_id, ok=False)
        raise
    ctx.tracker.tag(run_id, {"rlhf.uri": ctx.store.uri(stage, key), "rlhf.fingerprint": marker["fingerprint"]})
    ctx.tracker.tag(ctx.parent_run_id, {f"stage.{stage}": "ran", f"stage.{stage}.run_id": run_id})
    ctx.tracker.finish(run_id)
    for done in (work, checkpoints):
        shutil.rmtree(done, ignore_errors=True)
    return _output(ctx.store, marker, cached=False)


def _slots(compute):
    """Hold `compute.num_processes` slots of the Prefect global concurrency limit `compute.concurrency_limit`
    (strict: a limit that does not exist on the server is an error, not a silent pass)."""
    if compute is None or compute.concurrency_limit is None:
        return contextlib.nullcontext()
    from prefect.concurrency.sync import concurrency

    return concurrency(compute.concurrency_limit, occupy=compute.num_processes, strict=True)


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
    import json

    dumped = config.model_dump(mode="json")
    for key in ("concurrency_limit", "work_pool"):  # where a stage runs or queues does not change what it makes
        dumped.get("compute", {}).pop(key, None)
    blob = json.dumps({"config": dumped, "extra": extra or {}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
