"""Session fixtures: the demo data prepared once, SFT and the reward model trained once on it."""
from __future__ import annotations

import pytest

from components.config.loading import load_config


@pytest.fixture(scope="session")
def demo_config():
    return load_config("configs/demo.yaml")


@pytest.fixture(scope="session")
def demo_data(demo_config, tmp_path_factory):
    from components.data.prepare import prepare

    return prepare(demo_config.data, tmp_path_factory.mktemp("demo") / "data")


@pytest.fixture(scope="session")
def sft_run(demo_config, demo_data, tmp_path_factory):
    """(output dir, returned metrics, per-step log) of SFT with the demo config."""
    from components.sft.train import run
    from components.stage import Hooks, inputs_for

    out, logged = tmp_path_factory.mktemp("sft") / "model", []
    metrics = run(demo_config.sft, inputs_for("sft", demo_config, {"data": demo_data.path}), out,
                  Hooks(on_log=lambda step, m: logged.append((step, m))))
    return out, metrics, logged


@pytest.fixture(scope="session")
def reward_run(demo_config, demo_data, sft_run, tmp_path_factory):
    from components.reward.train import run
    from components.stage import Hooks, inputs_for

    out = tmp_path_factory.mktemp("reward") / "model"
    metrics = run(demo_config.reward, inputs_for("reward", demo_config, {"data": demo_data.path, "sft": sft_run[0]}),
                  out, Hooks())
    return out, metrics
