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
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.flow_runs import resume_flow_run
    from prefect.input.run_input import keyset_from_paused_state, read_flow_run_input

    from components.feedback.labels import read_dataset
    from flows.feedback import feedback_flow
    from flows.forms import shown
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
        fields = schema["properties"]
        # one entry per pair: its label and text show the prompt and both responses; its only input is the choice
        assert list(fields) == [f"pair_{n}{s}" for n in range(1, 5) for s in ("", "_score")]
        for n in range(1, 5):
            entry = fields[f"pair_{n}"]
            assert entry["title"] == f"Pair {n} of 4" and entry["default"] == "skip"
            assert entry["enum"] == ["A", "B", "tie", "skip"] and entry["type"] == "string"
            assert "**Prompt:**" in entry["description"] and "**A:**" in entry["description"]
        resume_flow_run(run.id, run_input={"pair_1": "A", "pair_2": "B", "pair_2_score": "4", "pair_3": "tie",
                                           "pair_4": "skip"})
    finally:
        worker.join(timeout=300)
    labels = result["out"]
    assert labels is not None and labels.stage == "feedback"
    records = read_dataset(labels.uri)
    assert len(records) == 2 and records[1]["score"] == 4
    for record, (n, picked) in zip(records, ((1, "A"), (2, "B"))):  # the chosen text is the one the person picked
        text = fields[f"pair_{n}"]["description"]
        assert f"**{picked}:** {shown(record['chosen'])}\n" in text
    with get_client(sync_client=True) as client:  # what the person sees after submitting
        artifact = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["rlhf-feedback"])))
    assert labels.uri in artifact[-1].data and f"reward.feedback=[{labels.uri}]" in artifact[-1].data
    parent = Tracker(f"sqlite:///{env}/mlflow.db", "rlhf-tiny").client.search_runs(
        [Tracker(f"sqlite:///{env}/mlflow.db", "rlhf-tiny").experiment_id], "tags.`rlhf.kind` = 'pipeline' and "
        "attributes.run_name LIKE 'rlhf-tiny-feedback-%'")[0]
    assert parent.data.metrics["feedback/unanswered"] == 1 and parent.data.metrics["feedback/ties"] == 1

    second = rlhf_pipeline(_config(env, f"reward.feedback=[{labels.uri}]"))
    ran = sorted(name for name, out in second.items() if not out.cached)
    assert ran == ["evaluate", "ppo", "reward"]
