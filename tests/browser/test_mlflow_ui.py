"""What a person sees in the MLflow UI (`mlflow server`), in headless Chromium: the pipeline runs side by side with
the key metrics as columns (the "Key metrics" view a pipeline run's description links to), and the evaluation's
report.html with its plots inside."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from components.compute.net import free_port
from tasks.tracking import KEY_METRICS, Tracker
from tests.browser.conftest import text


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory):
    tmp, port = tmp_path_factory.mktemp("mlflow"), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/m.db",
                             "--default-artifact-root", str(tmp / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    yield base, tmp
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_pipeline_runs_show_their_key_metrics_as_columns(mlflow_ui, browser):
    base, _ = mlflow_ui
    tracker = Tracker(base, "ui-check")  # creates the experiment as a pipeline run does: kind, view, primary metric
    for i in range(2):
        run = tracker.start_run(f"ui-check-pipeline-{i}", {}, {"rlhf.kind": "pipeline"})
        tracker.logger(run)(0, {m: 0.5 + i + k / 100 for k, m in enumerate(KEY_METRICS)})
        tracker.finish(run)
    browser.set_window_size(3200, 1000)  # the table renders only the columns in view
    browser.get(tracker.key_metrics_url())
    body = text(browser)
    browser.shot("mlflow-key-metrics")
    assert "Key metrics" in body and "Runs" in body and "Traces\n0" not in body  # the runs table, not GenAI
    for metric in KEY_METRICS:
        assert metric in body  # a column header
    assert "1.5" in body and "0.5" in body  # and the values of both runs
