"""When freed heap memory goes back to the system: between frames, never; every few seconds, all.

**Reuse between frames** (:func:`keep_freed_heap`). A decoded 1080p frame is a 6 MiB buffer,
made in a decode thread and freed in another one hundreds of times a second. glibc's defaults
hand such blocks back to the kernel (``mmap``/``munmap`` above its mmap threshold; above its
trim threshold, the free top of a thread's arena) and the next frame faults every page in again,
zeroed by the kernel: measured with ``streamer bench-pipeline`` (4 streams of 1080p, 20
instances), 142 minor page faults per published frame against 22 with blocks up to 32 MiB kept
in the arenas (glibc's largest mmap threshold) and no automatic trimming. The CLI applies this
at start, unless the operator set glibc's own knobs (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``): theirs win.

**Giving it back** (:func:`release_free_heap`), so that the daemon's RSS follows what it uses.

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
import os
from collections.abc import Callable, Mapping
from typing import Any

TRIM_INTERVAL_S = 5.0
"""Seconds between two trims of the daemon's heap."""


def _libc_function(name: str, *argtypes: type) -> Any:
    """The C library's function ``name`` taking ``argtypes`` and returning an int, or None where
    the C library has none (musl has no ``malloc_trim``; macOS neither it nor ``mallopt``)."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


_malloc_trim: Callable[[int], int] | None = _libc_function("malloc_trim", ctypes.c_size_t)

MMAP_THRESHOLD = 32 << 20
"""Blocks up to this size (glibc's maximum: a 4K RGB frame is 24 MiB) come from the arenas and stay there when freed."""
TRIM_THRESHOLD = 1 << 30
"""Free memory at an arena's top that glibc keeps instead of trimming on each ``free``; the
daemon's :func:`release_free_heap` every :data:`TRIM_INTERVAL_S` still returns all of it."""
OPERATOR_KNOBS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
"""Environment variables through which an operator tunes glibc's malloc: when one is set, :func:`keep_freed_heap` stays out."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_mallopt: Callable[[int, int], int] | None = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)


def keep_freed_heap(environ: Mapping[str, str] = os.environ) -> bool | None:
    """Let freed frame-sized blocks stay in the heap for the next frame (see the module docstring):
    True when set, None where the C library has no ``mallopt`` or the operator tuned malloc
    through ``environ`` (:data:`OPERATOR_KNOBS`), False if glibc refused a value."""
    if _mallopt is None or any(knob in environ for knob in OPERATOR_KNOBS):
        return None
    return bool(_mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(_mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_free_heap() -> bool | None:
    """Return free heap pages to the kernel: True if memory was released, False if none could be,
    None where the C library has no ``malloc_trim``."""
    if _malloc_trim is None:
        return None
    return bool(_malloc_trim(0))
