"""`prefect server start` on 127.0.0.1 with a temporary sqlite database, for tests that need the real server (its
scheduler, triggers and UI), and a small JSON client of its REST API."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from components.compute.net import free_port

ROOT = Path(__file__).parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


def api(base: str, path: str, body: dict | None = None, retries: int = 6):
    """One REST call. 503 is what the server answers while its sqlite database is locked by its own services (its
    scheduler, triggers); Prefect's client retries it with backoff, and so does this one. A GET that times out (the
    server starved of CPU by training on a 2-core machine) is retried too; a POST is not, it may have been applied."""
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"},
                                     method="POST" if body is not None else "GET")
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            if error.code != 503 or attempt == retries:
                raise
        except TimeoutError:
            if body is not None or attempt == retries:
                raise
        time.sleep(0.5 * 2 ** attempt)


@contextlib.contextmanager
def prefect_server(tmp: Path, ui: bool = False):
    """Yields (api base URL, env for clients and workers of this server)."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp}/prefect.db",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_UI_ENABLED": str(ui).lower(),
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",  # the scheduler's pass, every 60 s by default
           "RLHF_HOME": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
    (tmp / "home").mkdir(exist_ok=True)
    proc = subprocess.Popen(PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = env["PREFECT_API_URL"]
    deadline = time.time() + 120
    while True:
        try:
            api(base, "/health")
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError("prefect server did not start: " + proc.stdout.read().decode()[-3000:])
            time.sleep(0.5)
    try:
        yield base, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def cli(args: list[str], env: dict, timeout: int = 300) -> str:
    out = subprocess.run(PREFECT + args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def deploy_all(env: dict) -> None:
    """`prefect deploy --all` of prefect.yaml, with the cpu and gpu pools and the gpu concurrency limit."""
    for pool in ("cpu", "gpu"):  # gpu is docker/kubernetes in production; a process pool stands in here
        cli(["work-pool", "create", pool, "--type", "process"], env)
    cli(["--no-prompt", "deploy", "--all"], env)
    cli(["global-concurrency-limit", "create", "gpu", "--limit", "1"], env)
