"""Compiled COCO RLE kernels: run lengths of a box-local mask placed in its frame, and COCO's
compressed text of run lengths.

**Counts** (:func:`box_rle_counts`): COCO's column-major run lengths of a box-local mask, the zero
runs around the box being arithmetic (see :func:`streamer.schema.rle_counts`). **Text**
(:func:`coco_rle_string`): byte for byte what pycocotools writes (``tests/engines/test_masks.py``
and ``tests/engines/test_mask_kernels.py`` compare thousands of random cases with pycocotools'
``encode``). The host paste (:mod:`engines.mask_kernels`) uses both while it pastes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import numpy.typing as npt


def compiled(fn: Callable[..., Any]) -> Any:
    """``fn`` compiled without the GIL, its machine code cached on disk (beside this file, else
    under ``$XDG_CACHE_HOME``/``~/.cache``); where neither is writable, compiled in each process."""
    return _njit(fn, nogil=True)


def compiled_with_gil(fn: Callable[..., Any]) -> Any:
    """``fn`` compiled like :func:`compiled` but holding the GIL: for kernels of a few
    microseconds called from Python loops, where giving the GIL up and taking it back would
    cost more than the call and, with other threads waiting for it, hand the interpreter away
    at every call (the tracker's kernels, on the event loop)."""
    return _njit(fn, nogil=False)


def _njit(fn: Callable[..., Any], nogil: bool) -> Any:
    try:
        return numba.njit(cache=True, nogil=nogil)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=nogil)(fn)


@compiled
def most_runs(h: int, w: int) -> int:
    """Most COCO runs an ``h × w`` box mask can add to a frame: one starting at each pixel, one
    below each column, and the last."""
    return h * w + w + 2


@compiled
def box_rle_counts(mask: npt.NDArray[np.bool_], x0: int, y0: int, height: int, width: int) -> npt.NDArray[np.int64]:
    """Uncompressed COCO RLE counts of ``bool[h, w]`` ``mask`` at frame pixel ``(x0, y0)``.

    Runs alternate zeros and ones in column-major frame order, starting with zeros (a leading
    0 when frame pixel (0, 0) is set). Below a box column the frame is zero, except when the box
    spans the full height: then the next box column continues the run.
    """
    h, w = mask.shape
    counts = np.empty(most_runs(h, w), np.int64)
    return counts[:mask_runs(mask, x0, y0, height, width, counts)].copy()


@compiled
def mask_runs(mask: npt.NDArray[np.bool_], x0: int, y0: int, height: int, width: int,
               counts: npt.NDArray[np.int64]) -> int:
    """:func:`box_rle_counts` into ``counts`` (room for :func:`most_runs`); returns how many."""
    total = height * width
    h, w = mask.shape
    runs, last, prev = 0, 0, False
    for c in range(w if h > 0 else 0):
        base = (x0 + c) * height + y0
        for r in range(h):
            v = mask[r, c]
            if v != prev:
                counts[runs] = base + r - last
                runs, last, prev = runs + 1, base + r, v
        runs, last, prev = end_column(counts, runs, last, prev, base + h, h == height and c + 1 < w, total)
    counts[runs] = total - last
    return runs + 1


@compiled
def column_pieces(runs: npt.NDArray[np.int64], height: int) -> npt.NDArray[np.int64]:
    """``int64[n, 3]`` ``(column, first row, row after)`` of every vertical piece of foreground
    that COCO counts ``runs`` (uncompressed, column-major, ``height`` rows, zeros first)
    describe, in frame order: each run of ones cut where it crosses into the next column
    (:func:`next_piece`, counted once, then written)."""
    n = 0
    i, rest, end, col, _, _ = next_piece(runs, -1, 0, 0, height)
    while col >= 0:
        n += 1
        i, rest, end, col, _, _ = next_piece(runs, i, rest, end, height)
    pieces = np.empty((n, 3), np.int64)
    i, rest, end, col, r0, r1 = next_piece(runs, -1, 0, 0, height)
    for p in range(n):
        pieces[p, 0], pieces[p, 1], pieces[p, 2] = col, r0, r1
        i, rest, end, col, r0, r1 = next_piece(runs, i, rest, end, height)
    return pieces


@compiled
def next_piece(runs: npt.NDArray[np.int64], i: int, rest: int, end: int, height: int,
               ) -> tuple[int, int, int, int, int, int]:
    """The next vertical piece of foreground of COCO counts ``runs`` (as :func:`column_pieces`
    lists them), one at a time and nothing allocated: from the state ``(i, rest, end)`` — run
    ``i`` (odd: ones) has frame indices ``rest..end-1`` left; ``(-1, 0, 0)`` before the first —
    to ``(i, rest, end, column, first row, row after)``, column -1 when no piece is left."""
    while rest >= end:  # run i used up: on to the next run of ones
        if i + 2 >= runs.shape[0]:
            return i, rest, end, -1, 0, 0
        rest = end + runs[i + 1]
        end = rest + runs[i + 2]
        i += 2
    col = rest // height
    top = col * height
    stop = min(end, top + height)
    return i, stop, end, col, rest - top, stop - top


@compiled
def runs_to_box(runs: npt.NDArray[np.int64], height: int, x0: int, y0: int, h: int, w: int) -> npt.NDArray[np.bool_]:
    """The pixels of the ``h × w`` window at frame ``(x0, y0)`` that COCO counts ``runs``
    (uncompressed, column-major, ``height`` rows, zeros first) set: ``bool[w, h]``, the window
    transposed (its columns contiguous, as the runs go). Runs outside the window are ignored."""
    out = np.zeros((w, h), np.bool_)
    pieces = column_pieces(runs, height)
    for p in range(pieces.shape[0]):
        c = pieces[p, 0] - x0
        r0, r1 = max(pieces[p, 1] - y0, 0), min(pieces[p, 2] - y0, h)
        if 0 <= c < w and r1 > r0:
            out[c, r0:r1] = True
    return out


@compiled
def end_column(counts: npt.NDArray[np.int64], runs: int, last: int, prev: bool, below: int, joins_next: bool,
               total: int) -> tuple[int, int, bool]:
    """The run state ``(runs, last, prev)`` after a box column whose last pixel was ``prev``:
    below the column (frame index ``below``) the frame is zero, so a run of ones ends there —
    unless the box spans the full height and another column follows (``joins_next``: the run
    continues at the top of the next column), or the column ends the frame."""
    if prev and not joins_next and below < total:
        counts[runs] = below - last
        return runs + 1, below, False
    return runs, last, prev


@compiled
def coco_rle_string(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """COCO's compressed RLE text of ``counts`` (uncompressed run lengths) as ASCII bytes.

    The format (pycocotools' ``rleToString``): from the fourth count on, each count is written
    as its difference to the count two before (a run of the same value: zeros vs zeros, ones vs
    ones), so mask edges that move little cost few characters. Each signed value goes out in
    5-bit groups, least significant first; a group carries bit ``0x20`` when more follow, and
    the last group's bit ``0x10`` is the sign. Every group is offset by 48 into printable ASCII.
    """
    out, n = coco_text_into(counts, np.empty(counts.shape[0] * 13 + 1, np.uint8), 0)
    return out[:n].copy()


@compiled
def coco_text_into(counts: npt.NDArray[np.int64], out: npt.NDArray[np.uint8], start: int,
                   ) -> tuple[npt.NDArray[np.uint8], int]:
    """:func:`coco_rle_string` of ``counts`` written at ``out[start:]``: ``(out, end)``, ``out``
    replaced by a copy of its first ``start`` bytes twice as large as needed when it has no room
    (a frame's texts go into one buffer, no array per mask)."""
    out = with_room(out, start, counts.shape[0] * 13 + 1)  # 64-bit values: at most 13 groups of 5 bits
    n = start
    for i in range(counts.shape[0]):
        x = counts[i]
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: a negative value ends at -1
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out[n] = c + 48
            n += 1
    return out, n


@compiled
def with_room(buf: npt.NDArray[Any], used: int, more: int) -> npt.NDArray[Any]:
    """``buf`` if it has room for ``more`` items after its first ``used``, else a copy of those
    ``used`` items in an array twice as large as needed (amortized growth of a frame's buffers)."""
    if used + more <= buf.shape[0]:
        return buf
    longer = np.empty(2 * (used + more), buf.dtype)
    longer[:used] = buf[:used]
    return longer
