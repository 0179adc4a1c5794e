"""Giving freed heap memory back to the system, so that the daemon's RSS follows what it uses.

glibc's ``malloc`` keeps memory that the program freed in its arenas for reuse; a burst (a batch
of frames larger than usual after a camera returns, a decoder's buffers) can leave the resident
set 100 MiB higher for hours although nothing holds it. ``malloc_trim(0)`` returns every free
page of every arena to the kernel (``madvise(MADV_DONTNEED)``); it costs milliseconds, so the
daemon calls it every :data:`TRIM_INTERVAL_S` seconds from its supervision loop. Then the RSS an
operator graphs, and the soak test's leak check, see live memory, not the allocator's reserve.

On a C library without ``malloc_trim`` (musl, macOS) :func:`release_free_heap` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_INTERVAL_S = 5.0
"""Seconds between two trims of the daemon's heap."""


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def release_free_heap() -> bool | None:
    """Return free heap pages to the kernel: True if memory was released, False if none could be,
    None where the C library has no ``malloc_trim``."""
    if _malloc_trim is None:
        return None
    return bool(_malloc_trim(0))
