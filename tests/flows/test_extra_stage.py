"""A new stage is one registration: a policy stage registered here alone (it copies the SFT model) runs through the
pipeline flow (evaluated, gated and registered like PPO), through its own stage flow, and on 2 ranks through the
torchrun launcher, with no other file edited. Prefect test harness, MLflow on sqlite, a local store."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.config.loading import load_config


def copy_sft(config, inputs, out: Path, hooks) -> dict[str, float]:
    """The stage's entry point, run on every rank: the ranks meet in one process group, rank 0 writes the output."""
    from components.compute.engine import init_distributed, is_rank0, world
    from components.io.atomic import atomic_dir

    init_distributed()
    if is_rank0():
        with atomic_dir(out) as tmp:
            shutil.copytree(inputs.dirs["sft"], tmp, dirs_exist_ok=True)
        hooks.log(1, {"copy/files": float(len(list(out.iterdir())))})
    import torch.distributed as dist
    dist.barrier()
    return {"copy/world_size": float(world()[1])}


@pytest.fixture(scope="module")
def copy_stage():
    from components.config.stages import StageSpec, register, unregister

    register(StageSpec("copy", "1", f"{__name__}:copy_sft", None, reads=("sft",), policy=True, trains=True,
                       description="The SFT model, copied."), before="evaluate")
    yield
    unregister("copy")


@pytest.fixture(scope="module")
def env(tmp_path_factory, copy_stage):
    from prefect.testing.utilities import prefect_test_harness

    state = tmp_path_factory.mktemp("extra")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{state}/mlflow.db")
        with prefect_test_harness(server_startup_timeout=120):
            yield state


def _config(state: Path, *overrides: str):
    return load_config("configs/tiny.yaml", [f"output_dir={state}/artifacts", f"state_dir={state}", "policies=[copy]",
                                             *overrides])


def test_a_registered_stage_runs_in_the_pipeline_its_flow_and_on_two_ranks(env):
    from flows.pipeline import rlhf_pipeline
    from flows.stages import stage_flow
    from tasks.tracking import Tracker

    outputs = rlhf_pipeline(_config(env))
    assert list(outputs) == ["data", "sft", "reward", "copy", "evaluate"]
    copied = outputs["copy"]
    assert copied.parents == {"sft": outputs["sft"].fingerprint} and copied.metrics["copy/world_size"] == 1.0
    assert (Path(copied.uri) / "model.safetensors").read_bytes() == (Path(outputs["sft"].uri) /
                                                                     "model.safetensors").read_bytes()
    assert outputs["evaluate"].parents["copy"] == copied.fingerprint  # evaluated as the candidate policy
    client = Tracker(f"sqlite:///{env}/mlflow.db", "rlhf-tiny").client
    version = client.get_model_version_by_alias("rlhf-tiny-policy", "candidate")
    assert (version.tags["rlhf.stage"], version.tags["rlhf.algorithm"]) == ("copy", "copy")
    assert [m.value for m in client.get_metric_history(copied.mlflow_run_id, "copy/files")]

    # its own flow, forced, on 2 ranks through torchrun: the same cache key (placement is not part of it)
    flow = stage_flow("copy")
    assert flow.name == "copy" and list(flow.parameters.properties) == ["config", "sft_uri", "force", "preset",
                                                                        "overrides"]
    again = flow(config=_config(env, "placement.copy.num_processes=2"), sft_uri=outputs["sft"].uri)
    assert not again.cached and again.cache_key == copied.cache_key and again.fingerprint == copied.fingerprint
    assert again.metrics["copy/world_size"] == 2.0
    log = Path(client.download_artifacts(again.mlflow_run_id, "launch/output.log", str(env))).read_text()
    assert "[rank 0] done" in log
