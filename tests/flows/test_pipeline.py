"""The tiny pipeline as users run it: a Prefect flow (prefect_test_harness), MLflow on sqlite, artifacts in S3
over HTTP (moto's server on 127.0.0.1). Tests run in order and share one store."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from components.compute.net import free_port
from components.config.loading import load_config
from components.io.store import StoreError
from tasks.tracking import view_columns

BUCKET, PREFIX = "rlhf", "pipeline"


class S3:
    """moto's S3 server on a fixed port, so a test can stop it and start it again (state lives in-process)."""

    def __init__(self):
        self.port = free_port()
        self.server = None

    def start(self):
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self):
        self.server.stop()

    def markers(self, stage: str) -> set[str]:
        pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/{stage}/")
        return {o["Key"].split("/")[2] for p in pages for o in p.get("Contents", []) if o["Key"].endswith("/_stage.json")}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    state = tmp_path_factory.mktemp("state")
    s3 = S3()
    s3.start()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3.port}", "AWS_ACCESS_KEY_ID": "test",
                     "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                     "MLFLOW_TRACKING_URI": f"sqlite:///{state}/mlflow.db"}.items():
            mp.setenv(k, v)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        with prefect_test_harness(server_startup_timeout=120):
            yield s3, state
    s3.stop()


def run(env, *overrides):
    from flows.pipeline import rlhf_pipeline

    s3, state = env
    config = load_config("configs/tiny.yaml", [f"output_dir=s3://{BUCKET}/{PREFIX}", f"state_dir={state}",
                                               *overrides])
    return rlhf_pipeline(config)


def _tracker(env):
    from tasks.tracking import Tracker
    return Tracker(f"sqlite:///{env[1]}/mlflow.db", "rlhf-tiny")


def _stages_ran(env, outputs) -> list[str]:
    """Stage runs nested under the newest pipeline run."""
    tracker = _tracker(env)
    parent = tracker.client.search_runs([tracker.experiment_id], "tags.`rlhf.kind` = 'pipeline'",
                                        order_by=["attributes.start_time DESC"], max_results=1)[0]
    return sorted(r.data.tags["rlhf.stage"] for r in tracker.stage_runs(parent.info.run_id))


@pytest.fixture(scope="module")
def first(env):
    return run(env)


def test_every_stage_lands_in_s3_and_mlflow(env, first):
    import mlflow.transformers
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    s3, _ = env
    for stage, out in first.items():
        assert not out.cached and out.uri == f"s3://{BUCKET}/{PREFIX}/{stage}/{out.cache_key}"
        assert s3.markers(stage) == {out.cache_key}
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/ppo/")["Contents"]}
    assert f"{PREFIX}/ppo/{first['ppo'].cache_key}/model.safetensors" in keys
    assert _stages_ran(env, first) == ["data", "evaluate", "ppo", "reward", "sft"]
    client = _tracker(env).client
    sft_run = client.get_run(first["sft"].mlflow_run_id)
    assert sft_run.data.params["lr"] and sft_run.data.params["data.max_length"] == "64"
    assert len(client.get_metric_history(sft_run.info.run_id, "sft/train/loss")) >= 1
    ppo_history = client.get_metric_history(first["ppo"].mlflow_run_id, "objective/scores")
    assert [m.step for m in ppo_history] == [1, 2]
    tables = [a.path for a in client.list_artifacts(first["ppo"].mlflow_run_id, "samples")]
    assert tables == ["samples/iteration_00000.json", "samples/iteration_00002.json"]  # one per PPO evaluation
    evaluation = first["evaluate"].metrics
    assert {"eval/gold_mean", "eval/sft/gold_mean", "eval/gold_win_rate_vs_sft", "eval/kl_to_ref"} <= set(evaluation)
    version = client.get_model_version_by_alias("rlhf-tiny-policy", "candidate")
    assert version.run_id == first["ppo"].mlflow_run_id
    assert version.tags["rlhf.gate.decision"] == "promoted" and version.tags["rlhf.gate.metric"] == "gold_mean"
    assert version.tags["rlhf.gate.reason"] and first["ppo"].uri in version.description
    parent = client.get_run(version.tags["rlhf.pipeline_run_id"])  # the version links to its pipeline run
    assert parent.data.tags["rlhf.kind"] == "pipeline" and "| ppo | no |" in parent.data.tags["mlflow.note.content"]
    assert f"/runs/{parent.info.run_id}?workflowType=machine_learning)" in version.description  # a markdown link
    assert float(version.tags["metric.eval/gold_mean"]) == pytest.approx(first["evaluate"].metrics["eval/gold_mean"],
                                                                         rel=1e-3)  # the evaluation's, as gated
    experiment = client.get_experiment(parent.info.experiment_id)  # opens on runs, not the GenAI overview
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    system = [k for s in ("sft", "reward", "ppo") for k in client.get_run(first[s].mlflow_run_id).data.metrics
              if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system
    # one quantity, one column: the policy's held-out gold has the same name on the pipeline run, the evaluation
    # run and PPO's run (where it is a curve), so comparing any of them leaves no blank cell
    runs = {"pipeline": parent, **{s: client.get_run(first[s].mlflow_run_id) for s in ("ppo", "evaluate")}}
    assert all("eval/gold_mean" in r.data.metrics for r in runs.values())
    assert parent.data.metrics["eval/gold_mean"] == runs["evaluate"].data.metrics["eval/gold_mean"]
    shown = view_columns(experiment.tags["mlflow.sharedViewState.rlhf-key-metrics"])  # the "Key metrics" view
    assert shown and all(m in parent.data.metrics for m in shown)  # every column filled for a pipeline run
    assert "viewStateShareKey=rlhf-key-metrics" in parent.data.tags["mlflow.note.content"]
    report = Path(client.download_artifacts(first["evaluate"].mlflow_run_id, "report/report.html")).read_text()
    assert report.count("<img alt=") == 3 and report.count('src="data:image/png;base64,') == 3  # plots inside
    with get_client(sync_client=True) as prefect:  # the Prefect artifact carries its plots too
        artifact = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["rlhf-evaluation"])))
    assert artifact[-1].data.count("](data:image/png;base64,") == 3
    parts = mlflow.transformers.load_model("models:/rlhf-tiny-policy@candidate", return_type="components")
    ids = parts["tokenizer"]("Review of The Wild Promise:", return_tensors="pt")
    assert parts["model"].generate(**ids, max_new_tokens=4, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 4


def test_rerun_with_the_same_config_retrains_nothing(env, first):
    again = run(env)
    assert all(out.cached for out in again.values())
    assert {k: o.fingerprint for k, o in again.items()} == {k: o.fingerprint for k, o in first.items()}
    assert _stages_ran(env, again) == []
    client = _tracker(env).client
    assert len(client.search_model_versions("name = 'rlhf-tiny-policy'")) == 1
    # The first run had no champion, so its candidate was promoted; now it is the champion already.
    assert client.get_model_version_by_alias("rlhf-tiny-policy", "champion").run_id == first["ppo"].mlflow_run_id


def test_a_ppo_setting_reruns_ppo_and_evaluation_only(env, first):
    changed = run(env, "ppo.lr=3e-5", "promotion.margin=1000")  # the gate keeps the first policy as champion
    assert [s for s, o in changed.items() if not o.cached] == ["ppo", "evaluate"]
    assert changed["ppo"].cache_key != first["ppo"].cache_key
    assert _stages_ran(env, changed) == ["evaluate", "ppo"]
    assert {"eval/champion/gold_mean", "eval/gold_win_rate_vs_champion"} <= set(changed["evaluate"].metrics)
    client = _tracker(env).client
    assert client.get_model_version_by_alias("rlhf-tiny-policy", "champion").run_id == first["ppo"].mlflow_run_id
    assert client.get_model_version_by_alias("rlhf-tiny-policy", "candidate").run_id == changed["ppo"].mlflow_run_id


def test_ppo_and_dpo_from_one_sft_model_side_by_side(env, first):
    both = run(env, "policies=[ppo, dpo]", "promotion.margin=1000")  # the champion stays, for the tests after this
    # PPO, SFT and the reward model are this config's stored ones; DPO and the evaluation of both are new
    assert [s for s, o in both.items() if not o.cached] == ["dpo", "evaluate"]
    assert both["dpo"].parents == {"data": first["data"].fingerprint, "sft": first["sft"].fingerprint}
    metrics = both["evaluate"].metrics
    for algorithm, other in (("ppo", "dpo"), ("dpo", "ppo")):
        assert {f"eval/{algorithm}/gold_mean", f"eval/{algorithm}/kl_to_ref", f"eval/{algorithm}/distinct_1",
                f"eval/{algorithm}/gold_win_rate_vs_sft", f"eval/{algorithm}/gold_win_rate_vs_{other}"} <= set(metrics)
        assert metrics[f"eval/{algorithm}/gold_win_rate_vs_{other}"] + metrics[f"eval/{other}/gold_win_rate_vs_" \
                                                                                 f"{algorithm}"] == pytest.approx(1)
    chosen = max(("ppo", "dpo"), key=lambda a: metrics[f"eval/{a}/gold_mean"])
    assert metrics["eval/gold_mean"] == metrics[f"eval/{chosen}/gold_mean"]  # the candidate's column
    client = _tracker(env).client
    evaluation = client.get_run(both["evaluate"].mlflow_run_id)
    assert evaluation.data.tags["rlhf.candidate"] == chosen
    assert "frontier.png" in {a.path.split("/")[-1] for a in client.list_artifacts(evaluation.info.run_id, "report")}
    version = client.get_model_version_by_alias("rlhf-tiny-policy", "candidate")
    assert version.tags["rlhf.algorithm"] == chosen and version.run_id == both[chosen].mlflow_run_id
    pipeline_run = client.get_run(evaluation.data.tags["mlflow.parentRunId"])
    assert f"{chosen} chosen by gold_mean" in pipeline_run.data.tags["rlhf.promotion.reason"]
    if chosen == "dpo":  # a new version records its gate's decision (the champion PPO keeps the one it was promoted by)
        assert f"{chosen} chosen by gold_mean" in version.tags["rlhf.gate.reason"]
    # the champion (the first PPO policy, evaluated again as `ppo`) was weighed: the margin kept it
    assert client.get_model_version_by_alias("rlhf-tiny-policy", "champion").run_id == first["ppo"].mlflow_run_id
    # `rlhf runs` puts the two policies' numbers side by side, in columns only the two-policy run fills
    from rlhf.runs import comparison
    runs = client.search_runs([_tracker(env).experiment_id], "tags.`rlhf.kind` = 'pipeline'",
                              order_by=["attributes.start_time DESC"], max_results=2)
    header, rows = comparison(runs)
    for column in ("eval/ppo/gold_mean", "eval/dpo/gold_mean", "eval/dpo/kl_to_ref", "eval/gold_mean"):
        assert rows[0][header.index(column)] == f"{metrics[column]:.4g}"
    assert rows[1][header.index("eval/dpo/gold_mean")] == "" and rows[0][header.index("ran")] == "dpo,evaluate"
    # DPO does not read the reward model: a reward setting retrains the reward model and PPO, never DPO
    changed = run(env, "policies=[ppo, dpo]", "reward.lr=1e-4", "promotion.margin=1000")
    assert [s for s, o in changed.items() if not o.cached] == ["reward", "ppo", "evaluate"]
    assert changed["dpo"].cache_key == both["dpo"].cache_key


def test_grpo_with_a_verifiable_reward_is_keyed_without_the_reward_model(env, first):
    """GRPO scored by a Python function alone (the verifiable-reward setting) does not read the reward model: its
    key leaves it out, so a reward-model change reruns the reward model and the evaluation, never GRPO."""
    grpo = ["ppo.advantage=grpo", "ppo.num_generations=2", "ppo.batch_size=4", "promotion.margin=1000",
            "ppo.rewards=[{function: 'components.data.gold:gold_scores'}]"]
    out = run(env, *grpo)
    assert [s for s, o in out.items() if not o.cached] == ["ppo", "evaluate"]
    assert out["ppo"].parents == {"data": first["data"].fingerprint, "sft": first["sft"].fingerprint}
    client = _tracker(env).client
    assert len(client.get_metric_history(out["ppo"].mlflow_run_id, "rewards/gold_scores/mean")) == 2  # per iteration
    candidate = client.get_model_version_by_alias("rlhf-tiny-policy", "candidate")
    assert candidate.run_id == out["ppo"].mlflow_run_id
    assert (candidate.tags["rlhf.stage"], candidate.tags["rlhf.algorithm"]) == ("ppo", "grpo")
    changed = run(env, *grpo, "reward.lr=2e-4")
    assert [s for s, o in changed.items() if not o.cached] == ["reward", "evaluate"]
    assert changed["ppo"].cache_key == out["ppo"].cache_key


def test_es_joins_the_pipeline_as_a_policy_stage(env, first):
    """`policies: [ppo, es]`: ES trains from the same SFT model on the reward model, keyed on its own config, and
    the evaluation compares it with PPO (the champion stays: margin)."""
    out = run(env, "policies=[ppo, es]", "promotion.margin=1000")
    assert [s for s, o in out.items() if not o.cached] == ["es", "evaluate"]
    assert out["es"].parents == {"data": first["data"].fingerprint, "sft": first["sft"].fingerprint,
                                 "reward": out["reward"].fingerprint}
    metrics = out["evaluate"].metrics
    assert {"eval/es/gold_mean", "eval/es/kl_to_ref", "eval/es/gold_win_rate_vs_ppo",
            "eval/es/reward_hacking_excess"} <= set(metrics)
    history = _tracker(env).client.get_metric_history(out["es"].mlflow_run_id, "es/reward_mean")
    assert [m.step for m in history] == [1, 2]
    again = run(env, "policies=[ppo, es]", "promotion.margin=1000", "es.sigma=0.01")  # an ES setting: ES reruns
    assert [s for s, o in again.items() if not o.cached] == ["es", "evaluate"]


def test_a_deleted_artifact_recomputes_exactly_that_stage(env, first):
    boto3.client("s3").delete_object(Bucket=BUCKET, Key=f"{PREFIX}/reward/{first['reward'].cache_key}/model.safetensors")
    again = run(env)
    assert _stages_ran(env, again) == ["reward"]
    # Training is seeded, so the recomputed reward model has the same content and PPO stays cached.
    assert again["reward"].fingerprint == first["reward"].fingerprint and again["ppo"].cached


def test_s3_away_longer_than_the_backoff_at_upload_the_task_retry_stores_the_trained_policy(env, first):
    """S3 down for 40 s from the moment PPO's trained policy waits for upload: the store's backoff (~25 s) runs out
    and the task fails, keeping the trained output; Prefect's retry of the task then stores it, without training
    again, under the run that trained it."""
    s3, _ = env
    before = s3.markers("ppo")
    watcher = _stop_while_uploading(env, "ppo", 40)
    try:
        out = run(env, "ppo.lr=4e-5")
    finally:
        watcher.join()
    assert not out["ppo"].cached and s3.markers("ppo") == before | {out["ppo"].cache_key}
    tracker = _tracker(env)
    ppo_runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`rlhf.cache_key` = '{out['ppo'].cache_key}'")
    assert [r.info.run_id for r in ppo_runs] == [out["ppo"].mlflow_run_id]  # trained once
    assert ppo_runs[0].info.status == "FINISHED"
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    with get_client(sync_client=True) as client:
        attempts = [t.run_count for t in client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_="ppo-")), sort="EXPECTED_START_TIME_DESC", limit=1)]
    assert attempts == [2]


def _stop_while_uploading(env, stage: str, seconds: float) -> threading.Thread:
    """Stop the S3 server for `seconds` as soon as `stage`'s finished output waits in the work dir for upload."""
    s3, state = env

    def outage():
        deadline = time.time() + 300
        while not list((state / "work" / stage).glob("*.finished.json")) and time.time() < deadline:
            time.sleep(0.02)
        s3.stop()
        time.sleep(seconds)
        s3.start()

    watcher = threading.Thread(target=outage)
    watcher.start()
    return watcher


def test_a_short_s3_outage_at_upload_is_ridden_out(env, first):
    """S3 away for 4 s while the SFT model uploads: retries with backoff store it; nothing is trained twice."""
    watcher = _stop_while_uploading(env, "sft", 4)
    try:
        out = run(env, "sft.lr=2e-3", "promotion.margin=1000")
    finally:
        watcher.join()
    assert not out["sft"].cached and env[0].markers("sft") >= {out["sft"].cache_key}
    assert _stages_ran(env, out) == ["evaluate", "ppo", "reward", "sft"]


def test_a_same_size_corruption_is_not_stored_and_is_recomputed(env, first):
    """An object replaced by other bytes of the same size: its ETag differs from the one the marker recorded at
    upload, so the output is "not stored" and recomputed (seeded: the same content again)."""
    s3 = boto3.client("s3")
    key = f"{PREFIX}/sft/{first['sft'].cache_key}/model.safetensors"
    size = s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"\0" * size)
    again = run(env)
    assert not again["sft"].cached and again["sft"].fingerprint == first["sft"].fingerprint
    assert again["reward"].cached and again["ppo"].cached  # (the evaluation is keyed on the champion too)


def test_a_missing_bucket_fails_at_once_naming_the_object(env, first):
    with pytest.raises(StoreError, match=r"s3://no-such-bucket/p/data/\w+/_stage.json: NoSuchBucket \(not retried\)"):
        run(env, "output_dir=s3://no-such-bucket/p")
