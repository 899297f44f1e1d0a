"""A stage's memory: its peak resident memory (this process and its children, e.g. torchrun ranks, sampled in a
thread), and handing what it freed back to the OS before the next stage runs in the same process."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import threading

import psutil


class PeakRSS:
    """Context manager: `peak_mb` is the largest summed RSS (MiB) of this process and its children seen while the
    block ran, sampled every `interval` seconds (and at entry and exit)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def sample(self) -> None:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:  # a child that just exited
                pass
        self.peak_mb = max(self.peak_mb, total / 2**20)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "PeakRSS":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def release_freed() -> None:
    """Return the C allocator's free pages to the OS (glibc's `malloc_trim`; a no-op without glibc). glibc keeps
    what a finished stage freed (its models, optimizer states, activations) mapped for reuse: on SmolLM2 a LoRA
    SFT run leaves the process at 1390 MiB with no tensor alive, 588 MiB after the trim. The next stages of a
    pipeline did not reuse all of it: the SmolLM2 pipeline's PPO peaked at 4097 MiB without the trim, 3176 with."""
    gc.collect()  # DeepSpeed engines and their modules hold reference cycles
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
