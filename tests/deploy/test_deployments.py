"""prefect.yaml against a real Prefect server: `prefect server start` on 127.0.0.1 (temporary sqlite), `prefect
deploy --all`, a flow run created the way the UI's Run button does, run by a process worker the test starts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import yaml

from components.config.loading import load_config
from components.config.pipeline import PipelineConfig
from tests.prefect_server import PREFECT, ROOT, api, deploy_all, prefect_server


def test_prefect_yaml_is_rendered_from_the_demo_config():
    from rlhf.prefect_yaml import render

    assert yaml.safe_load((ROOT / "prefect.yaml").read_text()) == render("configs/demo.yaml")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefect")
    with prefect_server(tmp) as (base, env):
        yield base, env, tmp


def _scheduled_runs(base: str, deployment_id: str, timeout: float = 60) -> list[dict]:
    """Flow runs in state SCHEDULED that the server's scheduler created for the deployment (waits for them)."""
    deadline = time.time() + timeout
    while True:
        runs = [r for r in api(base, "/flow_runs/filter", {
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}) if r["auto_scheduled"]]
        if runs or time.time() > deadline:
            return runs
        time.sleep(1)


@pytest.fixture(scope="module")
def deployed(server):
    deploy_all(server[1])
    return server


def test_the_servers_scheduler_creates_the_weekly_retraining_runs(deployed):
    """Not the cron string: flow runs the scheduler service made (the deployment's Upcoming tab). SQLAlchemy 2.1
    broke this in Prefect 3.8.8's scheduler (InvalidRequestError every minute, no runs)."""
    base, _, _ = deployed
    retrain = api(base, "/deployments/name/rlhf-pipeline/retrain-weekly")
    scheduled = _scheduled_runs(base, retrain["id"])
    assert scheduled, "the scheduler created no flow run for retrain-weekly"
    for run in scheduled:  # cron "0 3 * * 1": Mondays at 03:00
        start = time.strptime(run["expected_start_time"][:19], "%Y-%m-%dT%H:%M:%S")
        assert (start.tm_wday, start.tm_hour, start.tm_min) == (0, 3, 0)


def test_deploy_schedule_schema_and_a_run_from_the_ui(deployed):
    base, env, tmp = deployed

    names = {d["name"] for d in api(base, "/deployments/filter", {})}
    assert names == {"retrain-weekly", "retrain-on-feedback", "sft-adhoc", "reward-adhoc", "ppo-adhoc", "dpo-adhoc",
                     "es-adhoc", "evaluate-adhoc", "feedback-adhoc"}
    retrain = api(base, "/deployments/name/rlhf-pipeline/retrain-weekly")
    assert [s["schedule"]["cron"] for s in retrain["schedules"]] == ["0 3 * * 1"]
    assert retrain["work_pool_name"] == "cpu"
    assert api(base, "/deployments/name/ppo/ppo-adhoc")["work_pool_name"] == "gpu"
    schema = retrain["parameter_openapi_schema"]
    defs = schema.get("definitions") or schema.get("$defs")
    ours = PipelineConfig.model_json_schema()
    assert defs["PipelineConfig"]["properties"].keys() == ours["properties"].keys()
    assert all(defs["PipelineConfig"]["properties"][k].get("description") == v.get("description")
               for k, v in ours["properties"].items())
    assert retrain["parameters"]["config"] == load_config("configs/demo.yaml").model_dump(mode="json")

    # The UI's Run button with a custom config: POST /deployments/{id}/create_flow_run with parameters.
    # SFT goes to the gpu pool (its sft-adhoc deployment, run by a second worker); PPO holds the gpu slot.
    tiny = load_config("configs/tiny.yaml", [f"output_dir={tmp}/artifacts", f"state_dir={tmp}/state",
                                             "placement.sft.work_pool=gpu", "placement.ppo.concurrency_limit=gpu"])
    run = api(base, f"/deployments/{retrain['id']}/create_flow_run",
               {"parameters": {"config": tiny.model_dump(mode="json")}})
    workers = [subprocess.Popen(PREFECT + ["worker", "start", "--pool", pool], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True) for pool in ("cpu", "gpu")]
    deadline, state = time.time() + 500, None
    try:
        while time.time() < deadline:
            state = api(base, f"/flow_runs/{run['id']}")["state"]
            if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
    finally:
        logs = [_stop(worker) for worker in workers]
    assert state and state["type"] == "COMPLETED", (state, logs)
    assert any((tmp / "artifacts" / "ppo").iterdir())
    stage_runs = api(base, "/flow_runs/filter", {"work_pools": {"name": {"any_": ["gpu"]}}})
    assert [(r["state"]["type"]) for r in stage_runs] == ["COMPLETED"]  # the SFT stage flow, on the gpu pool
    limit = api(base, "/v2/concurrency_limits/gpu")
    assert limit["limit"] == 1 and limit["active_slots"] == 0  # taken by PPO, then given back


def test_every_deployment_validates_with_the_defaults_the_run_button_sends(deployed):
    """Quick run (no parameters: the server fills in the deployment's) and the custom-run form untouched (the
    deployment's parameters over the schema's defaults): the flow run's parameters, read back from the server, pass
    the flow's own validation, the step where a worker failed with `config.sft.model: set exactly one of ...`."""
    from prefect.flows import load_flow_from_entrypoint

    base, _, _ = deployed
    for deployment in api(base, "/deployments/filter", {}):
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        schema = deployment["parameter_openapi_schema"]
        form = {**{k: p["default"] for k, p in schema["properties"].items() if "default" in p},
                **deployment["parameters"]}
        for sent in ({}, {"parameters": form}):
            run = api(base, f"/deployments/{deployment['id']}/create_flow_run", {**sent, "state": {"type": "CANCELLED"}})
            parameters = flow.validate_parameters(api(base, f"/flow_runs/{run['id']}")["parameters"])
            assert parameters["config"] == load_config("configs/demo.yaml"), deployment["name"]
        for name, prop in schema["properties"].items():  # every parameter says what it is
            assert prop.get("description"), (deployment["name"], name)
        # the UI renders descriptions as markdown, where <name> would vanish as an HTML tag: placeholders use {name}
        assert not [d for d in _descriptions(schema) if "<" in d], deployment["name"]


def _stop(worker: subprocess.Popen) -> str:
    """SIGTERM a worker's process group, SIGKILL it if a flow run keeps it alive past a minute; its last output."""
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        return worker.communicate(timeout=60)[0][-3000:]
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        return "(did not stop on SIGTERM within 60 s)\n" + worker.communicate()[0][-3000:]


def _descriptions(node):
    """Every description in a JSON schema, nested config fields included."""
    if isinstance(node, dict):
        if isinstance(node.get("description"), str):
            yield node["description"]
        for value in node.values():
            yield from _descriptions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _descriptions(value)


def test_stored_feedback_starts_a_retraining_run_with_the_dataset(deployed, tmp_path):
    """labels stored (the import flow, run against the real server) -> the rlhf.feedback.stored event -> the
    retrain-on-feedback deployment's trigger -> a flow run whose feedback_uri is the stored dataset."""
    base, env, _ = deployed
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "good", "rejected": "bad"}) + "\n"
                              for i in range(3)))
    script = ("import sys; from components.config.loading import load_config; "
              "from flows.feedback import import_feedback_flow; "
              f"out = import_feedback_flow(load_config('configs/demo.yaml', ['output_dir={tmp_path}/artifacts', "
              f"'state_dir={tmp_path}/state']), '{labels}'); print('URI', out.uri)")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    uri = done.stdout.split("URI ")[-1].strip()
    deployment = api(base, "/deployments/name/rlhf-pipeline/retrain-on-feedback")
    deadline, runs = time.time() + 120, []
    while not runs and time.time() < deadline:
        runs = api(base, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}},
                                                "flow_runs": {"state": {"type": {"not_any_": ["CANCELLED"]}}}})
        time.sleep(1)
    assert [r["parameters"]["feedback_uri"] for r in runs] == [uri]
    from prefect.flows import load_flow_from_entrypoint

    from tasks.context import resolve_config

    parameters = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"])).validate_parameters(runs[0]["parameters"])
    config = resolve_config(parameters["config"], feedback_uri=parameters["feedback_uri"])
    assert config.name == "rlhf-demo" and config.reward.feedback == [uri]  # the deployment's config plus the dataset
