"""The feedback flow pauses with a typed form; the test answers it through the Prefect API as the UI does; the
labels become a stored dataset that retrains the reward model and everything after it (and nothing before)."""
from __future__ import annotations

import threading
import time

import pytest

from components.config.loading import load_config


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    state = tmp_path_factory.mktemp("fb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{state}/mlflow.db")
        with prefect_test_harness(server_startup_timeout=120):
            yield state


def _config(state, *overrides):
    return load_config("configs/tiny.yaml", [f"output_dir={state}/artifacts", f"state_dir={state}", *overrides])


def _paused_run(timeout: float = 120):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName

    deadline = time.time() + timeout
    with get_client(sync_client=True) as client:
        while time.time() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))))
            if runs:
                return runs[0]
            time.sleep(0.5)
    raise TimeoutError("the feedback flow never paused")


def test_feedback_form_round_trip_then_reward_and_downstream_retrain(env):
    from prefect.flow_runs import resume_flow_run
    from prefect.input.run_input import keyset_from_paused_state, read_flow_run_input

    from components.feedback.labels import read_dataset
    from flows.feedback import feedback_flow
    from flows.pipeline import rlhf_pipeline
    from tasks.tracking import Tracker

    first = rlhf_pipeline(_config(env))
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=feedback_flow(
        _config(env), first["data"].uri, first["ppo"].uri, baseline_uri=first["sft"].uri, n_pairs=4, timeout_s=300)))
    worker.start()
    try:
        run = _paused_run()
        keyset = keyset_from_paused_state(run.state)
        schema = read_flow_run_input(keyset["schema"], flow_run_id=run.id)  # what the UI renders as the form
        assert "choices" in schema["properties"]
        description = read_flow_run_input(keyset["description"], flow_run_id=run.id)
        assert "Pair 3" in description and "- A: " in description
        resume_flow_run(run.id, run_input={"choices": [
            {"pair": 0, "choice": "A"}, {"pair": 1, "choice": "B", "score": 4},
            {"pair": 2, "choice": "tie"}, {"pair": 3, "choice": "skip"}]})
    finally:
        worker.join(timeout=300)
    labels = result["out"]
    assert labels is not None and labels.stage == "feedback"
    records = read_dataset(labels.uri)
    assert len(records) == 2 and records[1]["score"] == 4
    for record, pair in zip(records, (0, 1)):  # the chosen text is the one the person picked
        picked = "A" if pair == 0 else "B"
        block = description.split(f"**Pair {pair}**")[1]
        assert f"- {picked}: {record['chosen']}" in block
    parent = Tracker(f"sqlite:///{env}/mlflow.db", "rlhf-tiny").client.search_runs(
        [Tracker(f"sqlite:///{env}/mlflow.db", "rlhf-tiny").experiment_id], "tags.`rlhf.kind` = 'pipeline' and "
        "attributes.run_name = 'rlhf-tiny-feedback'")[0]
    assert parent.data.metrics["feedback/unanswered"] == 1 and parent.data.metrics["feedback/ties"] == 1

    second = rlhf_pipeline(_config(env, f"reward.feedback=[{labels.uri}]"))
    ran = sorted(name for name, out in second.items() if not out.cached)
    assert ran == ["evaluate", "ppo", "reward"]
