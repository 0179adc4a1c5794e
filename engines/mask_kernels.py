"""Compiled host kernels for box-local masks: bilinear paste + threshold, and COCO RLE counts.

The publish path's per-instance work, written as loops that numba compiles once (cached on
disk) and that release the GIL, so postprocess workers run beside the decode threads instead
of queueing on the interpreter. Both are exact:

**Paste** (:func:`paste_box`) decides each pixel of a grown box's visible part as
``torch.nn.functional.interpolate(bilinear, align_corners=False) > threshold`` would, without
reproducing PyTorch's float32 rounding (which depends on the CPU build: FMA contraction differs
between AVX2/AVX-512/ARM kernels). It computes the interpolated value in float64 from torch's own
float32 scale ``fl32(n_in / n_out)`` and source index ``scale * (j + 0.5) - 0.5`` (clamped at 0,
``i0 = min(floor(real), n_in - 1)``, ``i1 = i0 + 1`` below the last row/column, else ``i0``), and
decides a pixel only when its value is farther than :data:`BAND` from the threshold. PyTorch's
value differs from this float64 value by at most

- its source index rounding: ≤ 2 × ½ ulp(real) ≤ 1.9e-6 (``real < 32`` for ``M + 2 = 30``),
  moving the value by ≤ 1.9e-6 × (neighbour difference ≤ 1) per axis → ≤ 3.8e-6, plus
- the rounding of its four products and two sums in [0, 1]: ≤ 4 × ½ ulp(1) ≈ 2.4e-7,

so ≤ 4.1e-6 < ``BAND`` = 8e-6. A larger mask (``M + 2 > 32``) has source indices with a larger
ulp: the band doubles with each doubling of ``M + 2`` past 32.

A pixel inside the band gets a bound of its own (:func:`_axis_error`): the index error at its
row and column — one float32 ulp of ``scale * (j + 0.5)`` — times the neighbour differences it
actually interpolates between, doubled, plus :data:`ARITHMETIC_BOUND`. Edges of a mask head are
steep, but rarely 1 per source pixel, and most source indices are far below 32, so this bound is
usually a fraction of the band. Only a pixel still within its own bound of the threshold (or one
whose source index may round across an integer) makes the instance *uncertain*: the caller then
pastes it with PyTorch itself — 3.0–3.2 % of realistic instances at threshold 0.5 (9.2 % with
the band alone; :func:`streamer.replay.synthetic_detections`, 30 frames of 20 and of 100). The
tests compare every decided pixel with PyTorch, with thresholds placed inside the band.

**RLE counts** (:func:`box_rle_counts`): COCO's column-major run lengths of a box-local mask
placed in the frame, the zero runs around the box being arithmetic (see
:func:`streamer.schema.rle_counts`); :func:`coco_rle_string` writes them in COCO's compressed
text form, byte for byte what pycocotools writes (``tests/engines/test_masks.py`` compares
thousands of random cases with pycocotools' ``encode``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

BAND = 8.0e-6
"""Half-width of the band around the threshold in which a pixel needs a closer look (see above)."""
ARITHMETIC_BOUND = 1.0e-6
"""What PyTorch's float32 products, sums and ``1 - λ`` weights can move a value in [0, 1]: eight
roundings of at most 6e-8 each (4.8e-7), doubled."""


def _compiled(fn: Callable[..., Any]) -> Any:
    """``fn`` compiled without the GIL, its machine code cached on disk (beside this file, else
    under ``$XDG_CACHE_HOME``/``~/.cache``); where neither is writable, compiled in each process."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(fn)


@_compiled
def _source_index(n_in: int, n_out: int, j: int) -> tuple[float, float]:
    """PyTorch's source index of output index ``j``, exactly: ``(p, real)`` with
    ``p = scale * (j + 0.5)`` and ``real = max(p - 0.5, 0)``, ``scale`` = fl32 of the exact
    quotient ``n_in / n_out`` (what float32 division gives)."""
    p = float(np.float32(n_in / n_out)) * (j + 0.5)
    return p, max(p - 0.5, 0.0)


@_compiled
def _axis(n_in: int, n_out: int, start: int, stop: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Source indices ``i0, i1`` and weight ``λ`` of ``i1`` for output indices ``start..stop-1``."""
    count = stop - start
    i0 = np.empty(count, np.int64)
    i1 = np.empty(count, np.int64)
    lam = np.empty(count, np.float64)
    for k in range(count):
        _, real = _source_index(n_in, n_out, start + k)
        a = min(int(np.floor(real)), n_in - 1)
        frac = min(max(real - a, 0.0), 1.0)
        i0[k] = a
        i1[k] = a + 1 if a < n_in - 1 else a
        lam[k] = frac
    return i0, i1, lam


@_compiled
def paste_box(src: npt.NDArray[np.float32], x1: int, y1: int, x2: int, y2: int, x0: int, xe: int, y0: int, ye: int,
              threshold: float) -> tuple[npt.NDArray[np.bool_], int, bool]:
    """The visible part of one grown box's pasted, thresholded mask.

    ``src`` is the padded ``float32[M+2, M+2]`` mask, ``(x1, y1, x2, y2)`` the integer grown box
    (``x2``/``y2`` inclusive, may reach outside the frame), ``[y0:ye, x0:xe]`` the frame pixels it
    covers (``engines.masks``' visible window); ``threshold`` the float32 threshold as a float.
    Returns ``(mask, area, uncertain)``: ``bool[ye-y0, xe-x0]`` (empty when the window is), its
    foreground count, and whether some pixel stayed undecided — within :data:`BAND` of the
    threshold and within its own bound too (then ``mask`` is not to be used).
    """
    hc, wc = max(ye - y0, 0), max(xe - x0, 0)
    mask = np.zeros((hc, wc), np.bool_)
    if hc == 0 or wc == 0:
        return mask, 0, False
    n = src.shape[0]
    nx, ny = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)  # the size the whole grown box is resized to
    xi0, xi1, xl = _axis(n, nx, x0 - x1, xe - x1)
    yi0, yi1, yl = _axis(n, ny, y0 - y1, ye - y1)
    rows = np.empty((n, wc), np.float64)  # every source row interpolated along x
    for r in range(n):
        for c in range(wc):
            rows[r, c] = src[r, xi0[c]] * (1.0 - xl[c]) + src[r, xi1[c]] * xl[c]
    band, limit = BAND, 32
    while n > limit:  # a source index below 2^k has an ulp of 2^(k-24): the bound scales with it
        band, limit = 2.0 * band, 2 * limit
    hi, lo = threshold + band, threshold - band
    area = 0
    uncertain = 0
    banded = np.zeros(hc, np.bool_)  # rows with a pixel inside the band
    for rr in range(hc):
        a, b, lb = yi0[rr], yi1[rr], yl[rr]
        la = 1.0 - lb
        in_band = 0
        for c in range(wc):  # branch-free, so that the compiler vectorizes along the row
            v = rows[a, c] * la + rows[b, c] * lb
            fg = v > hi
            mask[rr, c] = fg
            area += fg
            in_band += (v >= lo) & (not fg)
        banded[rr] = in_band > 0
        uncertain += in_band
    if uncertain == 0:
        return mask, area, False
    # Some pixel lies within the band: bound PyTorch's deviation at that pixel alone.
    xe_, xnear = _axis_error(n, nx, x0 - x1, xe - x1)
    ye_, ynear = _axis_error(n, ny, y0 - y1, ye - y1)
    for rr in range(hc):
        if not banded[rr]:
            continue
        a, b, lb = yi0[rr], yi1[rr], yl[rr]
        for c in range(wc):
            v = rows[a, c] * (1.0 - lb) + rows[b, c] * lb
            if v < lo or v > hi:
                continue
            if xnear[c] or ynear[rr]:
                return mask, area, True
            dx = max(abs(src[a, xi1[c]] - src[a, xi0[c]]), abs(src[b, xi1[c]] - src[b, xi0[c]]))
            bound = 2.0 * (xe_[c] * dx + ye_[rr] * abs(rows[b, c] - rows[a, c])) + ARITHMETIC_BOUND
            if v - threshold > bound:
                mask[rr, c] = True
                area += 1
            elif threshold - v < bound:
                return mask, area, True
    return mask, area, False


@_compiled
def _axis_error(n_in: int, n_out: int, start: int, stop: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """For output indices ``start..stop-1``: a bound on how far PyTorch's float32 source index
    can lie from the exact one, and whether an integer lies within that distance (PyTorch may
    then interpolate between other source pixels: the caller gives up on the pixel).

    PyTorch computes ``scale * (j + 0.5) - 0.5`` in float32 with ``j + 0.5`` and ``scale``
    exact: one or two roundings (FMA or not), each at most ½ ulp of a value no larger than
    ``max(p, 0.5)`` with ``p = scale * (j + 0.5)``, so at most one float32 ulp of it. The clamp
    at 0 only shrinks the distance."""
    count = stop - start
    err = np.empty(count, np.float64)
    near = np.zeros(count, np.bool_)
    for k in range(count):
        p, real = _source_index(n_in, n_out, start + k)
        _, e = math.frexp(max(p, 0.5))  # max(p, 0.5) = m * 2**e with m in [0.5, 1): float32 ulp 2**(e - 24)
        err[k] = math.ldexp(1.0, e - 24)
        frac = real - math.floor(real)
        near[k] = real >= 1.0 - err[k] and (frac <= err[k] or frac >= 1.0 - err[k])
    return err, near


@_compiled
def box_rle_counts(mask: npt.NDArray[np.bool_], x0: int, y0: int, height: int, width: int) -> npt.NDArray[np.int64]:
    """Uncompressed COCO RLE counts of ``bool[h, w]`` ``mask`` at frame pixel ``(x0, y0)``.

    Runs alternate zeros and ones in column-major frame order, starting with zeros (a leading
    0 when frame pixel (0, 0) is set). Below a box column the frame is zero, except when the box
    spans the full height: then the next box column continues the run.
    """
    total = height * width
    h, w = mask.shape
    out = np.empty(h * w + w + 2, np.int64)
    n = 0
    last = 0
    prev = False
    for c in range(w if h > 0 else 0):
        base = (x0 + c) * height + y0
        for r in range(h):
            v = mask[r, c]
            if v != prev:
                pos = base + r
                out[n] = pos - last
                n += 1
                last, prev = pos, v
        if prev and not (h == height and c + 1 < w):
            pos = base + h
            if pos < total:
                out[n] = pos - last
                n += 1
                last, prev = pos, False
    out[n] = total - last
    return out[:n + 1].copy()


@_compiled
def coco_rle_string(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """COCO's compressed RLE text of ``counts`` (uncompressed run lengths) as ASCII bytes.

    The format (pycocotools' ``rleToString``): from the fourth count on, each count is written
    as its difference to the count two before (a run of the same value: zeros vs zeros, ones vs
    ones), so mask edges that move little cost few characters. Each signed value goes out in
    5-bit groups, least significant first; a group carries bit ``0x20`` when more follow, and
    the last group's bit ``0x10`` is the sign. Every group is offset by 48 into printable ASCII.
    """
    out = np.empty(counts.shape[0] * 13 + 1, np.uint8)  # 64-bit values: at most 13 groups of 5 bits
    n = 0
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
    return out[:n].copy()
