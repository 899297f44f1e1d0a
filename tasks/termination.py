"""A SIGTERM that cannot be lost.

`rlhf` turns SIGTERM into an exception: its own handler raises SystemExit(143); while a flow runs, Prefect's
SIGTERM bridge raises TerminationSignal instead, marks the runs Crashed and re-sends the signal to rlhf's handler.
An exception raised from a signal handler lands in whatever code the main thread runs at that moment, and code that
catches BaseException (a finalizer, an event-loop callback, a future's runner) swallows it: seen as a run that went
on to completion after its SIGTERM (2 of 5 runs of the operator probes). So the signal is also recorded below
Python's handlers: the interpreter's C handler writes every handled signal's number to the wakeup fd, whichever
Python handler is installed, and a thread reading it records SIGTERM. `check()`, called where a stage starts, at each
logged training step and at each checkpoint, raises again once one was recorded. Cleanup code never calls it, so the
termination's own unwinding (runs marked failed and Crashed) is not interrupted.
"""
from __future__ import annotations

import os
import signal
import threading

_received: int | None = None
_watching = False


def watch() -> None:
    """Record SIGTERM from now on (main thread only; a Python-level SIGTERM handler must be installed too, since
    the interpreter writes the wakeup fd only for signals it handles). Once per process."""
    global _watching
    if _watching:
        return
    _watching = True
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    threading.Thread(target=_record, args=(read,), name="rlhf-sigterm", daemon=True).start()


def _record(fd: int) -> None:
    global _received
    while data := os.read(fd, 64):
        if signal.SIGTERM in data:
            _received = signal.SIGTERM


def received() -> int | None:
    return _received


def check() -> None:
    """Raise if a SIGTERM was received: Prefect's TerminationSignal inside a flow run (the flow engine marks the
    runs Crashed and hands the signal on to rlhf's handler), else SystemExit(143)."""
    if _received is None:
        return
    from prefect.context import FlowRunContext
    from prefect.exceptions import TerminationSignal

    if FlowRunContext.get() is not None:
        raise TerminationSignal(signal=_received)
    raise SystemExit(128 + _received)
