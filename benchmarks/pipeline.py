"""The demo pipeline through `rlhf run`, cold (empty artifact store and tracking) then rerun with nothing
changed; the last line printed is one JSON object.

    python benchmarks/pipeline.py [--config configs/demo.yaml]

`overhead` = (flow body seconds - sum of the stages' compute seconds) / sum of the compute seconds, from the
MLflow runs: what Prefect task runs, MLflow logging, the artifact store and model registration add to the
training itself. `cold_s` and `rerun_s` are whole-command wall times (process start, imports and Prefect's
temporary server included).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rlhf_run(config: str, state: Path) -> float:
    cmd = [sys.executable, "-m", "rlhf", "run", "--config", config, "--set", f"state_dir={state}",
           "--set", f"output_dir={state}/artifacts"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PREFECT_HOME": str(state / "prefect")})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="rlhf-pipeline-bench-"))
    cold = rlhf_run(args.config, state)
    rerun = rlhf_run(args.config, state)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{state}/mlflow.db")
    exp = client.search_experiments()[0]
    first, second = client.search_runs([exp.experiment_id], "tags.`rlhf.kind` = 'pipeline'",
                                       order_by=["attributes.start_time ASC"])
    stages = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{first.info.run_id}'")
    compute = {r.data.tags["rlhf.stage"]: r.data.metrics[f"{r.data.tags['rlhf.stage']}/seconds"] for r in stages}
    body = first.data.metrics["pipeline/seconds"]
    print(json.dumps({
        "config": args.config, "cold_s": round(cold, 1), "rerun_s": round(rerun, 1),
        "flow_body_s": round(body, 2), "stage_compute_s": {k: round(v, 2) for k, v in sorted(compute.items())},
        "overhead": round((body - sum(compute.values())) / sum(compute.values()), 4),
        "rerun_flow_body_s": round(second.data.metrics["pipeline/seconds"], 2),
    }))


if __name__ == "__main__":
    main()
