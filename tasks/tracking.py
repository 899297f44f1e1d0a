"""MLflow for the pipeline, through explicit run ids (MlflowClient), so logging never depends on which thread
Prefect runs a task in: one parent run per pipeline run, one nested run per stage that executes."""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from components.config.stages import policy_stages

EXPERIMENT_KIND = "mlflow.experimentKind"  # read by the MLflow 3 UI to pick the experiment's default view
NOTE = "mlflow.note.content"  # a run's description in the MLflow UI
PARAM_LIMIT = 500  # characters; longer values are cut (MLflow rejects very long params)
# What a person compares pipeline runs by: held-out gold and reward-model score of the policy, its win rate and KL
# against SFT, the reward model's and SFT's held-out quality, wall time. The same names in every run that has them.
KEY_METRICS = ("eval/gold_mean", "eval/score_mean", "eval/gold_win_rate_vs_sft", "eval/kl_to_ref",
               "reward/eval/accuracy", "sft/eval/loss", "pipeline/seconds")


def policy_metrics() -> tuple[str, ...]:
    """Each policy stage's own numbers when a run trained several (`policies: [ppo, dpo]`): `rlhf runs` adds the
    columns some run has, so PPO and DPO are compared side by side."""
    return tuple(f"eval/{policy}/{q}" for policy in policy_stages()
                 for q in ("gold_mean", "score_mean", "kl_to_ref", "gold_win_rate_vs_sft"))


# The runs table with KEY_METRICS as columns, saved as the UI's "Save view" saves one (an experiment tag holding a
# name and the deflated view state): listed under Views as "Key metrics", opened by KEY_VIEW's link. The default
# table shows no metric columns at all.
SHARED_VIEW, KEY_VIEW = "mlflow.sharedViewState.", "rlhf-key-metrics"
PRIMARY_METRIC = "mlflow.experiment.primaryMetric.name"  # the UI's first chart
ML_WORKFLOW = "workflowType=machine_learning"  # the UI opens on the GenAI overview unless a link says otherwise


OWNER = "rlhf.owner"  # host:pid:process start time of the process that runs (and must end) a run


def _this_process() -> str:
    import psutil

    return f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.0f}"


def _alive(owner: str) -> bool:
    """Does the process `host:pid:start` (on this host) still run? A pid reused by another process does not count."""
    import psutil

    _, pid, started = owner.rsplit(":", 2)
    try:
        return f"{psutil.Process(int(pid)).create_time():.0f}" == started
    except (psutil.NoSuchProcess, ValueError):
        return False


def is_key_metric(name: str) -> bool:
    return name in KEY_METRICS or name.startswith(("eval/", "data/rows/")) or name == "dpo/eval/rewards/accuracies"


def saved_view(name: str, columns: list[str]) -> str:
    """A runs-table view in the MLflow UI's saved-view format: metric columns, newest run first."""
    import base64
    import zlib

    state = json.dumps({"selectedColumns": [f"metrics.`{m}`" for m in columns], "orderByKey": "attributes.start_time",
                        "orderByAsc": False}, separators=(",", ":"))
    packed = "deflate;" + base64.b64encode(zlib.compress(state.encode())).decode()
    return json.dumps({"name": name, "createdAt": int(time.time() * 1000), "state": packed})


def view_columns(tag_value: str) -> list[str]:
    """The metric columns of a saved view (the inverse of `saved_view`)."""
    import base64
    import zlib

    state = json.loads(zlib.decompress(base64.b64decode(json.loads(tag_value)["state"].removeprefix("deflate;"))))
    return [c.removeprefix("metrics.`").removesuffix("`") for c in state["selectedColumns"]]


def default_tracking_uri(state_dir: str | Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a sqlite store in the project state directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(state_dir).resolve()}/mlflow.db"


def without_credentials(uri: str) -> str:
    """`uri` without a user:password (basic auth in front of a tracking server), which go to MLflow's own
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead (unless set): MLflow prints its tracking URI
    with every run it ends, and child processes (torchrun ranks) inherit the environment, never an argv."""
    parts = urlsplit(uri)
    if not parts.username:
        return uri
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username))
    os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password or ""))
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"sft": {"lr": 1e-3}} -> {"sft.lr": "0.001"}; lists and None as JSON."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = (value if isinstance(value, str) else json.dumps(value))[:PARAM_LIMIT]
    return out


def run_logger(client: MlflowClient, run_id: str):
    """An `on_log(step, metrics)` callback for the components' training loops, logging into `run_id`."""
    def on_log(step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
        for start in range(0, len(batch), 1000):
            client.log_batch(run_id, metrics=batch[start:start + 1000])
    return on_log


class Tracker:
    """One MLflow experiment; `uri` a tracking URI (sqlite:///..., http://...)."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None):
        import mlflow

        uri = without_credentials(uri)
        mlflow.set_tracking_uri(uri)  # also the registry; mlflow.transformers.load_model reads it
        self.uri, self.client = uri, MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (found.experiment_id if found else
                              self.client.create_experiment(experiment, artifact_location=artifact_location))
        if found is None or EXPERIMENT_KIND not in found.tags:  # the UI opens on runs, not the GenAI overview
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, "custom_model_development")
        stored = found.tags.get(SHARED_VIEW + KEY_VIEW) if found else None
        if stored is None or view_columns(stored) != list(KEY_METRICS):
            self.client.set_experiment_tag(self.experiment_id, SHARED_VIEW + KEY_VIEW,
                                           saved_view("Key metrics", list(KEY_METRICS)))
            self.client.set_experiment_tag(self.experiment_id, PRIMARY_METRIC, KEY_METRICS[0])

    def start_run(self, name: str, params: dict[str, str], tags: dict[str, str], parent: str | None = None) -> str:
        """A new run, tagged with the process that owns it (`rlhf.owner`: host, pid, process start time), so a run
        its process left RUNNING when it died is recognised later (`end_abandoned`)."""
        tags = {**tags, OWNER: _this_process()}
        if parent:
            tags = {**tags, "mlflow.parentRunId": parent}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        items = list(params.items())
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[start:start + 100]])
        return run.info.run_id

    def logger(self, run_id: str):
        return run_logger(self.client, run_id)

    def tag(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def describe(self, run_id: str, text: str) -> None:
        self.tag(run_id, {NOTE: text})

    def run_url(self, run_id: str) -> str:
        """The run's page in the MLflow UI (for an http tracking server; else the run's experiment/run ids)."""
        path = f"#/experiments/{self.experiment_id}/runs/{run_id}?{ML_WORKFLOW}"
        return f"{self.uri.rstrip('/')}/{path}" if self.uri.startswith("http") else path

    def key_metrics_url(self) -> str:
        """The experiment's runs table with KEY_METRICS as columns, in the MLflow UI."""
        path = f"#/experiments/{self.experiment_id}/runs?{ML_WORKFLOW}&viewStateShareKey={KEY_VIEW}"
        return f"{self.uri.rstrip('/')}/{path}" if self.uri.startswith("http") else path

    @contextlib.contextmanager
    def system_metrics(self, run_id: str, interval_s: float = 2.0):
        """CPU, memory (and GPU with pynvml) as MLflow system metrics on `run_id` while the block runs."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()
            if monitor._logging_step == 0:  # shorter than one interval: MLflow drops the sample taken at the start
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()

    def end_abandoned(self) -> list:
        """Mark FAILED (tag `rlhf.end_reason`) every RUNNING run of this experiment whose owning process, on this
        host, is gone: what a kill -9, an OOM kill or a power cut left behind. Returns those runs. Runs owned by
        other hosts are left alone (this host cannot tell whether their process lives)."""
        host = socket.gethostname()
        abandoned = []
        for run in self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
            owner = run.data.tags.get(OWNER, "")
            if not owner.startswith(host + ":") or _alive(owner):
                continue
            self.tag(run.info.run_id, {"rlhf.end_reason": f"abandoned: its process ({owner}) died while it ran"})
            self.finish(run.info.run_id, ok=False)
            abandoned.append(run)
        return abandoned

    def finish(self, run_id: str, ok: bool = True) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    @contextlib.contextmanager
    def finishing(self, run_id: str):
        """Ends `run_id` when the block does: FAILED if it raised (the error goes on), else FINISHED."""
        try:
            yield
        except BaseException:
            self.finish(run_id, ok=False)
            raise
        self.finish(run_id)

    def log_file(self, run_id: str, name: str, text: str, artifact_path: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, name).write_text(text)
            self.client.log_artifact(run_id, str(Path(tmp, name)), artifact_path)

    def log_table(self, run_id: str, rows: list[dict], artifact_file: str) -> None:
        """Rows as an MLflow table (shown in the run's Artifacts and in the Evaluation view)."""
        if rows:
            self.client.log_table(run_id, data={k: [r.get(k) for r in rows] for k in rows[0]},
                                  artifact_file=artifact_file)

    def stage_runs(self, parent: str) -> list:
        return self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
