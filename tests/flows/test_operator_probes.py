"""An operator's probes, on `rlhf run` as users run it (a real process against a real `prefect server start` or its
own temporary one, MLflow on sqlite, artifacts in S3 over HTTP on moto's server or on local disk): kill -9 mid-PPO
and rerun on a fresh disk, SIGTERM and kill -9 of a run on its temporary server, pipelines started at once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import boto3
import pytest
from moto.server import ThreadedMotoServer

from components.compute.net import free_port
from tests.prefect_server import ROOT, prefect_server

BUCKET = "crash"
TINY_PPO = ["ppo.iterations=6", "ppo.checkpoint_every=2", "ppo.eval_every=6"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    port = free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in aws.items():
            mp.setenv(k, v)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        with prefect_server(tmp) as (_, server_env):
            yield {**server_env, **aws}, tmp
    s3.stop()


def rlhf(env, state, *args: str, root: str = f"s3://{BUCKET}/store") -> subprocess.Popen:
    """`rlhf run` of the tiny config with its own state dir (a worker's local disk); the store by default shared S3."""
    sets = [f"state_dir={state}", f"output_dir={root}", *TINY_PPO]
    return subprocess.Popen([sys.executable, "-m", "rlhf", "run", "--config", "configs/tiny.yaml", *args,
                             *[a for s in sets for a in ("--set", s)]], cwd=ROOT, env=env[0], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def stored(suffix: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="store/")
    return [o["Key"] for p in pages for o in p.get("Contents", []) if o["Key"].endswith(suffix)]


def ppo_runs(env):
    from tasks.tracking import Tracker

    tracker = Tracker(env[0]["MLFLOW_TRACKING_URI"], "rlhf-tiny")
    return tracker.client, tracker.client.search_runs([tracker.experiment_id], "tags.`rlhf.stage` = 'ppo'",
                                                       order_by=["attributes.start_time ASC"])


def test_kill_9_mid_ppo_then_a_rerun_on_another_disk_resumes_and_ends_as_an_uninterrupted_run(env):
    tmp = env[1]
    killed = rlhf(env, tmp / "worker-a")
    deadline = time.time() + 600
    while not [k for k in stored("_partial/checkpoint.json") if "/ppo/" in k]:
        assert killed.poll() is None and time.time() < deadline, killed.communicate()[0][-4000:]
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    [checkpoint] = [k for k in stored("_partial/checkpoint.json") if "/ppo/" in k]

    resumed = finish(rlhf(env, tmp / "worker-b"))  # a replacement worker: nothing local, the store has it all
    assert "ppo: resuming from the checkpoint in s3://crash/store/ppo/" in resumed
    assert not stored("_partial/checkpoint.json") and not [k for k in stored("") if "/_partial/" in k]
    client, runs = ppo_runs(env)
    first, second = runs[-2:]
    # the killed process's runs were ended by the next start: MLflow FAILED with a reason, Prefect Crashed
    assert first.info.status == "FAILED" and "abandoned" in first.data.tags["rlhf.end_reason"]
    assert not client.search_runs([first.info.experiment_id], "attributes.status = 'RUNNING'")
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    with temporary_settings({PREFECT_API_URL: env[0]["PREFECT_API_URL"]}), get_client(sync_client=True) as prefect:
        killed_flow = prefect.read_flow_run(client.get_run(first.data.tags["mlflow.parentRunId"]).data.tags[
            "rlhf.prefect_flow_run_id"])
        assert killed_flow.state.type.value == "CRASHED"
        assert {t.state.type.value for t in prefect.read_task_runs(flow_run_filter=_flow_run(killed_flow.id))} \
            <= {"COMPLETED", "CRASHED"}
    done_before = [m.step for m in client.get_metric_history(first.info.run_id, "objective/scores")]
    redone = [m.step for m in client.get_metric_history(second.info.run_id, "objective/scores")]
    assert second.data.tags["rlhf.resumed_from"] == "s3://crash/" + checkpoint.rsplit("/", 1)[0]
    assert redone[0] > 1 and redone[-1] == 6 and redone[0] - 1 <= max(done_before)
    print(f"killed after iteration {max(done_before)}; the rerun started at iteration {redone[0]} "
          f"({max(done_before) - redone[0] + 1} redone)")

    straight = finish(rlhf(env, tmp / "worker-c", "--force", "ppo"))  # uninterrupted, from iteration 1
    assert "resuming" not in straight
    _, runs = ppo_runs(env)
    assert runs[-1].data.tags["rlhf.fingerprint"] == runs[-2].data.tags["rlhf.fingerprint"]


def _flow_run(flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    return FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))


def _children(pid: int) -> list:
    import psutil
    return psutil.Process(pid).children(recursive=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_run_on_its_temporary_server_stopped_by_a_signal_leaves_no_server_and_no_running_run(env, sig):
    """Without PREFECT_API_URL the run starts its own temporary Prefect server. SIGTERM is a clean failure (exit
    143, its MLflow runs FAILED); after kill -9 the server child still goes (parent-death signal), and the runs the
    dead process left RUNNING end at the next start."""
    import psutil

    alone = {k: v for k, v in env[0].items() if k != "PREFECT_API_URL"}
    state = env[1] / f"alone-{sig.name}"
    proc = rlhf((alone, env[1]), state, "--set", f"sft.seed={sig.value}")  # not cached: SFT trains
    deadline = time.time() + 600
    while not any((state / "work" / "sft").glob("*")):  # training: the server is up and the stage runs
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-4000:]
        time.sleep(0.1)
    servers = [p for p in _children(proc.pid) if "uvicorn" in " ".join(p.cmdline())]
    assert len(servers) == 1
    os.kill(proc.pid, sig)  # the process alone, not its group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), out[-3000:]
    psutil.wait_procs(servers, timeout=30)
    assert not any(p.is_running() for p in servers), "the temporary Prefect server outlived its run"
    for child in _children(os.getpid()):  # nothing else of the run is left either (torchrun ranks, ...)
        assert "rlhf" not in " ".join(child.cmdline())
    from tasks.tracking import Tracker
    tracker = Tracker(alone["MLFLOW_TRACKING_URI"], "rlhf-tiny")
    if sig == signal.SIGKILL:
        assert tracker.client.search_runs([tracker.experiment_id], "attributes.status = 'RUNNING'")
        tracker.end_abandoned()  # what the next `rlhf run` does first
    running = tracker.client.search_runs([tracker.experiment_id], "attributes.status = 'RUNNING'")
    assert not running, ([r.info.run_name for r in running], out[-3000:])


@pytest.mark.parametrize("where", ["local", "s3"])
def test_pipelines_started_at_once_compute_each_output_once_and_register_it_once(env, where):
    """Three `rlhf run`s on one fresh state dir, 0.5 s apart, each with its own temporary Prefect server and the
    same new MLflow sqlite file: two with the same config, one with another PPO learning rate. Every run ends
    well; each stage output is computed once (the others wait for it and reuse it); each policy is one version."""
    from tasks.tracking import Tracker

    state = env[1] / f"together-{where}"
    alone = {k: v for k, v in env[0].items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    root = str(state / "artifacts") if where == "local" else f"s3://{BUCKET}/together"
    seed = ["--set", "sft.seed=11"]  # not cached from the other tests
    procs = []
    for extra in ([], [], ["--set", "ppo.lr=3e-5"]):
        procs.append(rlhf((alone, env[1]), state, *seed, *extra, root=root))
        time.sleep(0.5)
    for proc in procs:
        finish(proc)
    tracker = Tracker(f"sqlite:///{state}/mlflow.db", "rlhf-tiny")
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.`rlhf.stage` != ''")
    computed = [(r.data.tags["rlhf.stage"], r.data.tags["rlhf.cache_key"]) for r in runs]
    assert len(computed) == len(set(computed)), computed  # no output computed twice
    # the evaluation is keyed on the champion too: a run evaluating after another promoted evaluates anew
    assert sorted(s for s, _ in computed if s != "evaluate") == ["data", "ppo", "ppo", "reward", "sft"]
    pipelines = tracker.client.search_runs([tracker.experiment_id], "tags.`rlhf.kind` = 'pipeline'")
    assert len(pipelines) == 3 and {r.info.status for r in pipelines} == {"FINISHED"}
    versions = tracker.client.search_model_versions("name = 'rlhf-tiny-policy'")
    assert sorted(v.run_id for v in versions) == sorted({v.run_id for v in versions})  # one version per policy
    assert {v.run_id for v in versions} == {r.info.run_id for r in runs if r.data.tags["rlhf.stage"] == "ppo"}


def test_a_secret_in_the_tracking_uri_is_stored_and_printed_nowhere(env):
    """MLFLOW_TRACKING_URI with a user:password (basic auth in front of an `mlflow server`) and a torchrun stage:
    after a full pipeline, the planted password is in no file of the state dir, the MLflow server's store and
    artifacts, the Prefect server's database, the artifact store, nor in the run's output."""
    import urllib.request

    tmp, port = env[1] / "secret", free_port()
    tmp.mkdir()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{tmp}/mlflow.db", "--artifacts-destination", str(tmp / "artifacts"),
                               "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        secret = "planted-Secret-4711"
        tracking = {**env[0], "MLFLOW_TRACKING_URI": f"http://alice:{secret}@127.0.0.1:{port}"}
        out = finish(rlhf((tracking, tmp), tmp / "state", "--set", "sft.seed=17", "--set",
                          "placement.sft.num_processes=2"))
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking["MLFLOW_TRACKING_URI"])
        [pipeline] = client.search_runs([client.get_experiment_by_name("rlhf-tiny").experiment_id],
                                        "tags.`rlhf.kind` = 'pipeline'")
        assert f"MLflow: http://127.0.0.1:{port}," in pipeline.data.tags["mlflow.note.content"]  # the summary
        sft = client.get_run(pipeline.data.tags["stage.sft.run_id"])
        assert client.get_metric_history(sft.info.run_id, "sft/train/loss")  # rank 0 logged: the URI reached it
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    s3 = boto3.client("s3")
    objects = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    leaks = [k for k in objects if secret.encode() in s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()]
    leaks += [str(p) for root in (tmp, env[1]) for p in root.rglob("*") if p.is_file() and secret.encode() in
              p.read_bytes()]
    assert secret not in out and not leaks


def test_an_input_error_inside_the_flow_is_one_line_and_the_traceback_only_with_debug(env, tmp_path):
    """A binary file as the SFT data: the run fails naming file and line, without Prefect's 70-110 lines of
    traceback before it; `rlhf --debug` shows them."""
    data = tmp_path / "sft.jsonl"
    data.write_bytes(b'{"prompt": "a", "completion": "b"}\n\x89PNG\r\n\x1a\n\x00\xff\n')
    sets = ["data.source=files", f"data.files.sft_train.path={data}", f"data.files.preference_train.path={data}",
            "data.files.tokenizer=.rlhf/fixtures/smollm2", f"state_dir={tmp_path}", f"output_dir={tmp_path}/store"]
    outputs = {}
    for debug in ([], ["--debug"]):
        done = subprocess.run([sys.executable, "-m", "rlhf", *debug, "run", "--config", "configs/tiny.yaml",
                               *[a for s in sets for a in ("--set", s)]], cwd=ROOT, env=env[0], text=True,
                              capture_output=True, timeout=300)
        assert done.returncode == 2
        outputs[bool(debug)] = done.stdout + done.stderr
    assert outputs[False].rstrip().splitlines()[-1] == f"error: {data}:2: not UTF-8 text (invalid start byte); " \
                                                        "save the file as UTF-8"
    assert "Traceback" not in outputs[False] and "Traceback" in outputs[True]
