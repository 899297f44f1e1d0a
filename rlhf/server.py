"""The temporary Prefect server of a run without PREFECT_API_URL, started so that it never outlives the run.

Prefect starts its own temporary server (`SubprocessASGIServer`) as a plain child that is stopped at exit: after a
kill -9 or an OOM kill of the run it is left behind, re-parented to PID 1, holding its port and database. This
starts the same server (uvicorn on Prefect's app factory, as Prefect does) with the kernel's parent-death signal set,
so it gets SIGTERM when the run's process dies however it dies, and points the PREFECT_API_URL setting at it. Two runs
starting at once on one state dir take turns starting theirs (a lock file), so their database migrations never race.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from components.compute.net import free_port
from components.errors import RLHFError

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def temporary_server(prefect_home: str | Path, timeout: float = 120) -> Iterator[str]:
    """Start Prefect's API server on a free local port for the block; yields its API URL, which is this
    process's PREFECT_API_URL setting in the block."""
    home = Path(prefect_home)
    port = free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--host",
           "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    with open(home / "server.lock", "w") as lock, open(log, "ab") as out:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until this server answers: one migration at a time
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        _wait_healthy(proc, url, timeout, log)
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                APILogHandler().flush()  # the run's last log lines reach the server before it stops
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RLHFError(f"the temporary Prefect server did not start within {timeout:.0f}s; its output "
                                f"({log}): {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
