"""What a person sees in the Prefect UI, in headless Chromium: the Run form of a deployment, and the human-feedback
form answered and submitted with the mouse."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.browser.conftest import text as _text
from tests.prefect_server import ROOT, api, deploy_all, prefect_server


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    with prefect_server(tmp, ui=True) as (base, env):
        deploy_all(env)
        yield base, env, tmp


def test_the_run_form_of_a_deployment_shows_its_defaults_and_descriptions(ui, browser):
    base, _, _ = ui
    ppo = api(base, "/deployments/name/ppo/ppo-adhoc")
    browser.get(base.removesuffix("/api") + f"/deployments/deployment/{ppo['id']}/run")
    body = _text(browser)
    browser.shot("ppo-adhoc-run-form")
    values = browser.execute_script("return [...document.querySelectorAll('input, textarea')].map(e => e.value)")
    assert "rlhf-demo" in values and ".rlhf/artifacts" in values  # the deployment's config fills the form
    assert "outputs go to {root}/{stage}/{cache_key}/." in body  # placeholders survive the markdown
    for parameter in ("data_uri", "sft_uri", "reward_uri", "force", "preset", "overrides"):
        assert parameter in body
    assert "this config's own" in body and "Recompute the stage" in body


def test_the_feedback_form_shows_each_pair_and_submits_from_the_browser(ui, browser):
    from selenium.webdriver.support.ui import Select

    base, env, tmp = ui
    script = ("from components.config.loading import load_config; from flows.feedback import feedback_flow; "
              f"feedback_flow(load_config('configs/tiny.yaml', ['output_dir={tmp}/artifacts', 'state_dir={tmp}/state']),"
              " n_pairs=4, timeout_s=600)")
    flow = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, paused = time.time() + 300, []
        while not paused and time.time() < deadline and flow.poll() is None:
            paused = api(base, "/flow_runs/filter", {"flow_runs": {"state": {"name": {"any_": ["Paused"]}}}})
            time.sleep(1)
        assert paused, flow.communicate()[0][-3000:] if flow.poll() is not None else "never paused"
        run = paused[0]
        browser.get(base.removesuffix("/api") + f"/runs/flow-run/{run['id']}")
        _text(browser)
        next(b for b in browser.find_elements("xpath", "//button") if b.text.strip() == "Resume").click()
        body = _text(browser, 4)
        browser.shot("feedback-form")
        for n in range(1, 5):  # each entry shows its prompt and both responses
            block = body.split(f"Pair {n} of 4")[1].split(f"Pair {n}: quality")[0]
            assert "Prompt: Review of" in block and "\nA: " in block and "\nB: " in block
        selects = [s for s in browser.find_elements("xpath", "//select")
                   if [o.get_attribute("value") for o in Select(s).options][:1] in (["A"], ["none"])]
        assert len(selects) == 8  # a choice and a score per pair, and no editable pair number
        for select, value in zip(selects, ("A", "none", "B", "4", "tie", "none", "skip", "none")):
            browser.execute_script("arguments[0].value = arguments[1]; "  # the UI's select wraps a hidden <select>
                                   "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));", select, value)
        browser.shot("feedback-form-filled")
        next(b for b in browser.find_elements("xpath", "//button") if b.text.strip() == "Submit").click()
        out, _ = flow.communicate(timeout=300)
        assert flow.returncode == 0, out[-3000:]
    finally:
        if flow.poll() is None:
            flow.kill()
    assert "answered 3, ties 1, unanswered 1, preferences 2" in out
    browser.get(base.removesuffix("/api") + f"/runs/flow-run/{run['id']}")
    body = _text(browser)
    browser.shot("feedback-run-logs")
    assert "feedback stored at" in body and "reward.feedback=[" in body
    artifacts = api(base, "/artifacts/filter", {"artifacts": {"key": {"any_": ["rlhf-feedback"]}}})
    assert artifacts and "Dataset:" in artifacts[0]["data"]
