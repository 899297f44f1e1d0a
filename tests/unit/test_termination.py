"""A SIGTERM whose handler's exception is swallowed still stops the next stage step (tasks/termination.py)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.prefect_server import ROOT

SWALLOWED = textwrap.dedent("""
    import os, signal, time
    from tasks import termination

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    termination.watch()
    try:  # what a finalizer or a callback runner does with an exception raised inside it
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
    except BaseException:
        pass
    deadline = time.time() + 10
    while termination.received() is None and time.time() < deadline:
        time.sleep(0.01)
    print("went on", flush=True)
    termination.check()  # where a stage starts, a training step is logged, a checkpoint is stored
    print("not stopped", flush=True)
""")


def test_a_sigterm_whose_exception_was_swallowed_stops_the_run_at_the_next_check():
    proc = subprocess.run([sys.executable, "-c", SWALLOWED], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["went", "on"], proc.stdout + proc.stderr
    assert proc.returncode == 143, proc.stderr


def test_without_a_sigterm_the_checks_pass():
    code = "from tasks import termination; termination.watch(); termination.check(); print('ran')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "ran\n"), proc.stderr
