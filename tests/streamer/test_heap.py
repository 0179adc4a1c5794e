"""``streamer.heap``: freed frame buffers stay in the heap for the next frame (glibc ``mallopt``),
and go back to the system at each trim (``malloc_trim``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.heap import OPERATOR_KNOBS, keep_freed_heap, release_free_heap


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_blocks_leave_the_resident_set_after_a_trim() -> None:
    blocks = [bytearray(100_000) for _ in range(3000)]  # 300 MB in heap-sized blocks (< mmap threshold)
    kept = blocks[::50]  # a few survivors pin the heap: freeing alone returns almost nothing
    del blocks
    before = rss_mib()
    assert release_free_heap() is True
    after = rss_mib()
    assert before - after > 200, (before, after)
    assert len(kept) == 60


FAULTS_OF_A_REUSED_BLOCK = """
import resource, sys
import numpy as np
from streamer.heap import keep_freed_heap

if sys.argv[1] == "keep":
    assert keep_freed_heap({}) is True
block = np.ones(20 << 20, np.uint8)  # a 20 MiB frame, written (every page faulted in) and freed
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(20 << 20, np.uint8)  # the next frame
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's thresholds are glibc's")
@pytest.mark.parametrize(("mode", "refaulted"), [("keep", False), ("default", True)])
def test_a_freed_frame_buffer_is_reused_without_faulting_its_pages_in_again(mode: str, refaulted: bool) -> None:
    """A fresh process writes a 20 MiB block, frees it and writes another: with the heap kept,
    the second block is the first one's memory (no page faults); with glibc's defaults it was
    unmapped on free and its 5,120 pages fault in again (the case that shows this test can fail;
    500–1,000 faults here: the kernel maps anonymous memory in folios of several pages)."""
    env = {k: v for k, v in os.environ.items() if k not in OPERATOR_KNOBS}
    out = subprocess.run([sys.executable, "-c", FAULTS_OF_A_REUSED_BLOCK, mode], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    faults = int(out.split()[-1])
    assert (faults > 100) if refaulted else (faults < 10), (mode, faults)


def test_an_operators_malloc_settings_win() -> None:
    assert keep_freed_heap({"MALLOC_TRIM_THRESHOLD_": "0"}) is None
    assert keep_freed_heap({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}) is None
