"""A stage with placement num_processes=2 runs through torchrun inside the pipeline flow: same StageOutput,
rank 0 alone logs into the stage's MLflow run."""
from components.config.loading import load_config


def test_two_process_sft_inside_the_pipeline_logs_once(tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import rlhf_pipeline
    from tasks.tracking import Tracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    config = load_config("configs/tiny.yaml", [f"output_dir={tmp_path}/artifacts", f"state_dir={tmp_path}",
                                               "placement.sft.num_processes=2", "sft.compute.micro_batch_size=8",
                                               "sft.model.arch.dropout=0.0", "sft.log_every=1"])
    with prefect_test_harness(server_startup_timeout=120):
        outputs = rlhf_pipeline(config)
    sft = outputs["sft"]
    assert not sft.cached and sft.metrics["sft/eval/loss"] < sft.metrics["sft/eval/loss_before"]
    assert (tmp_path / "artifacts" / "sft" / sft.cache_key / "model.safetensors").is_file()
    client = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "rlhf-tiny").client
    history = client.get_metric_history(sft.mlflow_run_id, "sft/train/loss")
    assert [m.step for m in history] == list(range(1, 9))  # one value per step: rank 0 only
    log = client.download_artifacts(sft.mlflow_run_id, "launch/output.log", str(tmp_path))
    text = open(log).read()
    assert "[rank 0] sft step 8/8" in text and "[rank 1] sft step" not in text
    assert outputs["ppo"].metrics and not outputs["ppo"].cached  # downstream stages read the launched output
