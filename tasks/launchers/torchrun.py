"""The torchrun launcher: `placement.num_processes` ranks of `tasks.launchers.rank` on this node."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

from components.compute.net import free_port
from components.config.placement import StagePlacement
from components.errors import RLHFError
from tasks import termination
from tasks.launchers.request import StageRequest
from tasks.runner import StageRun


def launch(request: StageRequest, stage_run: StageRun, placement: StagePlacement) -> dict[str, float]:
    """torchrun the ranks; returns rank 0's metrics. The request goes down as a file, the stage run's id on the
    command line and the tracking URI (which may hold credentials) in the environment, so rank 0 logs into the
    same MLflow run; the stage's checkpoint directory and where it is stored too, so rank 0 copies each
    checkpoint to the store. The ranks' output becomes the run's `launch/output.log` artifact."""
    side = request.out.parent / f"{request.out.name}.launch"
    side.mkdir(parents=True, exist_ok=True)
    (side / "request.json").write_text(request.to_json())
    nproc = placement.num_processes
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "tasks.launchers.rank", "--request", str(side / "request.json"),
           "--result", str(side / "result.json"), "--run-id", stage_run.run_id]
    if stage_run.partial is not None:
        partial = stage_run.partial
        cmd += [f"--checkpoints={partial.local}", f"--checkpoint-store={partial.store.root}",
                f"--cache-key={partial.key}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                                 "MLFLOW_TRACKING_URI": stage_run.tracker.uri})  # by env: argv is public (ps)
    try:
        output = _communicate(proc)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)  # the ranks go down with the launcher
        raise
    try:
        (side / "output.log").write_text(output)
        stage_run.tracker.client.log_artifact(stage_run.run_id, str(side / "output.log"), "launch")
        if proc.returncode != 0:
            raise RLHFError(f"{request.stage}: torchrun with {nproc} processes failed (exit {proc.returncode}):\n"
                            f"{output[-3000:]}")
        return json.loads((side / "result.json").read_text())
    finally:
        shutil.rmtree(side, ignore_errors=True)


def _communicate(proc: subprocess.Popen) -> str:
    """The launcher's output once it exits; checks for a recorded SIGTERM every second meanwhile."""
    while True:
        try:
            return proc.communicate(timeout=1.0)[0]
        except subprocess.TimeoutExpired:  # communicate() keeps what it read; calling it again goes on
            termination.check()
