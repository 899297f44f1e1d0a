"""A stage's memory accounting: the peak it reports and the freed memory it hands back to the OS."""
from __future__ import annotations

import sys
import time

import psutil
import pytest
import torch

from components.compute.memory import PeakRSS, release_freed


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def test_peak_rss_sees_an_allocation_that_is_gone_by_the_end():
    release_freed()  # else earlier tests' freed, still resident pages can serve the allocation without growing RSS
    with PeakRSS(interval=0.01) as memory:
        start = rss_mb()
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.1)  # a few samples while it lives
        del block
    assert memory.peak_mb >= start + 60


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_freed_returns_the_pages_a_finished_stage_left_in_the_heap():
    # 64 KiB tensors come from the heap, not mmap; keeping every 16th pins the heap's top, so glibc cannot give the
    # others back by itself: what a finished stage's many small tensors leave behind.
    tensors = [torch.ones(16 * 1024) for _ in range(6000)]  # ~375 MiB
    kept = tensors[::16]
    del tensors
    before = rss_mb()
    release_freed()
    after = rss_mb()
    assert before - after > 200, (before, after)
    assert all(float(t[0]) == 1.0 for t in kept)  # live memory untouched
