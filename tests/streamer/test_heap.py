"""``streamer.heap``: freed heap memory goes back to the system (glibc ``malloc_trim``)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from streamer.heap import release_free_heap


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
