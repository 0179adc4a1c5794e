"""Compiled host kernel for box-local masks: bilinear paste + threshold, with COCO RLE on the way.

The publish path's per-instance work, written as loops that numba compiles once (cached on
disk) and that release the GIL, so postprocess workers run beside the decode threads instead
of queueing on the interpreter. :func:`paste_frame` pastes every instance of a frame in one
call and keeps each mask as its COCO runs and RLE text (:mod:`engines.rle_kernels`), no pixels:
the publish path needs the text, the tracker the runs, and pixels are decoded from the runs
only where something reads them (annotated frames, polygons).

**Exactness.** :func:`paste_box` decides each pixel of a grown box's visible part as
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

A pixel inside the band gets a bound of its own (:func:`_band_pixel`): the index error at its
row and column — one float32 ulp of ``scale * (j + 0.5)`` — times the neighbour differences it
actually interpolates between, doubled, plus :data:`ARITHMETIC_BOUND`. Edges of a mask head are
steep, but rarely 1 per source pixel, and most source indices are far below 32, so this bound is
usually a fraction of the band. Only a pixel still within its own bound of the threshold (or one
whose source index may round across an integer) makes the instance *uncertain*: the caller then
pastes it with PyTorch itself — 3.0–3.2 % of realistic instances at threshold 0.5 (9.2 % with
the band alone; :func:`streamer.replay.synthetic_detections`, 30 frames of 20 and of 100). The
tests compare every decided pixel with PyTorch, with thresholds placed inside the band.

**Down the columns, in blocks.** Each box is pasted one frame column at a time, top to bottom:
COCO's order, so the runs come out as the pixels are decided (:func:`_paste_columns`). Between two
source rows and two source columns every bilinear value is a convex combination of the four
corner values: a *block* whose corners all lie on one side of the band is decided whole, for all
the frame columns between those two source columns at once. Only the rows of a block that
straddles the band are looked at: each row's values at the two source columns (interpolated
along y once per block) bound the row across those columns, so most of its rows are decided for
the whole group of columns too, and only the rows whose two values straddle the band are
computed per pixel. A column is then a handful of runs and a few pixels near the mask's edge.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from engines.box_kernels import visible
from engines.rle_kernels import coco_text_into, compiled, end_column, most_runs, with_room

BAND = 8.0e-6
"""Half-width of the band around the threshold in which a pixel needs a closer look (see above)."""
BLOCK_MARGIN = 1.0e-9
"""How far beyond the band a block's four corners must lie to decide the block whole: the float64
rounding of a convex combination of them (≲ 1e-16) cannot bring one of its values back."""
ARITHMETIC_BOUND = 1.0e-6
"""What PyTorch's float32 products, sums and ``1 - λ`` weights can move a value in [0, 1]: eight
roundings of at most 6e-8 each (4.8e-7), doubled."""


@compiled
def _source_index(n_in: int, n_out: int, j: int) -> tuple[float, float]:
    """PyTorch's source index of output index ``j``, exactly: ``(p, real)`` with
    ``p = scale * (j + 0.5)`` and ``real = max(p - 0.5, 0)``, ``scale`` = fl32 of the exact
    quotient ``n_in / n_out`` (what float32 division gives)."""
    p = float(np.float32(n_in / n_out)) * (j + 0.5)
    return p, max(p - 0.5, 0.0)


@compiled
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


@compiled
def paste_box(src: npt.NDArray[np.float32], x1: int, y1: int, x2: int, y2: int, x0: int, xe: int, y0: int, ye: int,
              threshold: float, height: int, width: int,
              ) -> tuple[npt.NDArray[np.bool_], int, bool, npt.NDArray[np.int64]]:
    """The visible part of one grown box's pasted, thresholded mask, and its COCO RLE counts.

    ``src`` is the padded ``float32[M+2, M+2]`` mask, ``(x1, y1, x2, y2)`` the integer grown box
    (``x2``/``y2`` inclusive, may reach outside the frame), ``[y0:ye, x0:xe]`` the pixels of the
    ``height × width`` frame it covers (``engines.masks``' visible window); ``threshold`` the
    float32 threshold as a float. Returns ``(mask, area, uncertain, counts)``: ``bool[ye-y0, xe-x0]``
    (column-major: the transpose of a C-ordered ``[w, h]`` array), its foreground count, whether some pixel
    stayed undecided — within :data:`BAND` of the threshold and within its own bound too (then
    neither ``mask`` nor ``counts`` is to be used) — and the uncompressed COCO RLE counts of the
    mask in the frame (what :func:`box_rle_counts` gives for ``mask``).
    """
    h, w = max(ye - y0, 0), max(xe - x0, 0)
    mask_t = np.zeros((w, h), np.bool_)
    counts = np.empty(most_runs(h, w), np.int64)
    area, uncertain, runs = _paste_columns(mask_t, src, x1, y1, x2, y2, x0, y0, h, w, threshold, height, width,
                                           counts)
    return mask_t.T, area, uncertain, counts[:runs].copy()


@compiled
def _band_edges(threshold: float, n: int) -> tuple[float, float]:
    """``(threshold + band, threshold - band)`` for a padded mask of side ``n``: :data:`BAND`,
    doubled for each doubling of ``n`` past 32 (a source index below 2^k has an ulp of
    2^(k-24): PyTorch's deviation scales with it)."""
    band, limit = BAND, 32
    while n > limit:
        band, limit = 2.0 * band, 2 * limit
    return threshold + band, threshold - band


@compiled
def _paste_columns(mask_t: npt.NDArray[np.bool_], src: npt.NDArray[np.float32], x1: int, y1: int, x2: int, y2: int,
                   x0: int, y0: int, hc: int, wc: int, threshold: float, height: int, width: int,
                   counts: npt.NDArray[np.int64]) -> tuple[int, bool, int]:
    """:func:`paste_box` of the ``hc × wc`` window at ``(x0, y0)`` into ``mask_t`` (``bool[wc, hc]``,
    zeroed: the mask transposed; or empty, ``(0, 0)``, for the runs alone) and its run lengths
    into ``counts`` (room for :func:`most_runs`), one frame column at a time, top to bottom:
    COCO's order, so the runs come out as the pixels are decided. Returns ``(area, uncertain,
    runs)``.

    Between two source rows ``a``, ``a + 1`` and two source columns ``b``, ``b + 1`` every
    bilinear value is a convex combination of the four source values at those corners: a
    *block* whose four corners all lie above the band (by :data:`BLOCK_MARGIN`, for the float64
    rounding of the combination) is foreground whole, one whose corners all lie below it
    background. The columns between the same two source columns share their blocks, so their
    blocks are classified once, and consecutive decided blocks of the same side are merged into
    one run of rows: a column is then a handful of runs. A block that straddles the band is
    split into its rows: a row's values at the two source columns (``col_a``, ``col_b``) bound
    it across the group's columns in the same way, so a row beyond the band on one side is
    decided for the whole group, and only the rows whose two values straddle the band are
    computed per column, pixel by pixel.
    """
    pixels = mask_t.shape[0] > 0
    total = height * width
    if hc == 0 or wc == 0:
        counts[0] = total
        return 0, False, 1
    n = src.shape[0]
    nx, ny = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)  # the size the whole grown box is resized to
    xi0, xi1, xl = _axis(n, nx, x0 - x1, x0 - x1 + wc)
    yi0, yi1, yl = _axis(n, ny, y0 - y1, y0 - y1 + hc)
    seg = np.empty(hc + 1, np.int64)  # rows seg[s]..seg[s+1]-1 interpolate between the same two source rows
    nseg = 0
    for rr in range(hc):
        if rr == 0 or yi0[rr] != yi0[rr - 1]:
            seg[nseg] = rr
            nseg += 1
    seg[nseg] = hc
    hi, lo = _band_edges(threshold, n)
    sides = _block_sides(src, hi, lo)
    # the runs of one group of columns: rows item_start..item_stop-1 of kind 0/1 (background/
    # foreground whole) or 2 (rows computed per column, from their values at the group's two
    # source columns: col_a, col_b)
    item_start = np.empty(hc, np.int64)
    item_stop = np.empty(hc, np.int64)
    item_kind = np.empty(hc, np.int64)
    col_a = np.empty(hc, np.float64)
    col_b = np.empty(hc, np.float64)
    area = 0
    runs, last, prev = 0, 0, False
    c = 0
    while c < wc:
        a0, a1 = xi0[c], xi1[c]
        group_end = c + 1
        while group_end < wc and xi0[group_end] == a0:
            group_end += 1
        items = 0
        for s in range(nseg):
            r0, r1 = seg[s], seg[s + 1]
            ia, ib = yi0[r0], yi1[r0]
            kind = sides[ia, a0]
            if kind < 2:
                items = _add_item(item_start, item_stop, item_kind, items, r0, r1, kind)
                continue
            v00, v01, v10, v11 = float(src[ia, a0]), float(src[ia, a1]), float(src[ib, a0]), float(src[ib, a1])
            for rr in range(r0, r1):  # the block straddles the band: each of its rows, between its two source columns
                lb = yl[rr]
                va = v00 * (1.0 - lb) + v10 * lb
                vb = v01 * (1.0 - lb) + v11 * lb
                col_a[rr], col_b[rr] = va, vb
                items = _add_item(item_start, item_stop, item_kind, items, rr, rr + 1, _side(min(va, vb), max(va, vb), hi, lo))
        for cc in range(c, group_end):
            lx = xl[cc]
            base = (x0 + cc) * height + y0  # frame index (column-major) of the column's first pixel
            for it in range(items):
                s0, s1, kind = item_start[it], item_stop[it], item_kind[it]
                if kind == 2:  # rows whose value straddles the band somewhere in the group: per pixel
                    for rr in range(s0, s1):
                        v = col_a[rr] * (1.0 - lx) + col_b[rr] * lx
                        fg = v > hi
                        if not fg and v >= lo:  # inside the band: bound PyTorch's deviation at this pixel alone
                            ia, ib = yi0[rr], yi1[rr]
                            ra = src[ia, a0] * (1.0 - lx) + src[ia, a1] * lx
                            rb = src[ib, a0] * (1.0 - lx) + src[ib, a1] * lx
                            dx = max(abs(src[ia, a1] - src[ia, a0]), abs(src[ib, a1] - src[ib, a0]))
                            decided = _band_pixel(v, threshold, n, nx, x0 - x1 + cc, dx, ny, y0 - y1 + rr,
                                                  abs(rb - ra))
                            if decided < 0:
                                return area, True, 0
                            fg = decided == 1
                        if fg:
                            if pixels:
                                mask_t[cc, rr] = True
                            area += 1
                        if fg != prev:
                            counts[runs] = base + rr - last
                            runs, last, prev = runs + 1, base + rr, fg
                    continue
                fg = kind == 1  # rows s0..s1-1 all foreground or all background
                if fg:
                    if pixels:
                        mask_t[cc, s0:s1] = True
                    area += s1 - s0
                if fg != prev:
                    counts[runs] = base + s0 - last
                    runs, last, prev = runs + 1, base + s0, fg
            runs, last, prev = end_column(counts, runs, last, prev, base + hc, hc == height and cc + 1 < wc, total)
        c = group_end
    counts[runs] = total - last
    return area, False, runs + 1


@compiled
def _block_sides(src: npt.NDArray[np.float32], hi: float, lo: float) -> npt.NDArray[np.int8]:
    """:func:`_side` of every block of the padded ``float32[n, n]`` mask ``src``, at once:
    ``int8[n, n]``, entry ``[a, b]`` for the block between source rows ``a``, ``min(a + 1, n - 1)``
    and source columns ``b``, ``min(b + 1, n - 1)`` (the pair :func:`_axis` gives an output index
    whose first source index is ``a``, or ``b``). One pass over contiguous rows, which the compiler
    vectorizes: 29 × 29 blocks cost less here than reading four corners per block where a group
    of columns meets a run of rows (57 → 34 µs per frame of 20 instances)."""
    n = src.shape[0]
    out = np.empty((n, n), np.int8)
    for a in range(n):
        top, bottom, row = src[a], src[min(a + 1, n - 1)], out[a]
        for b in range(n - 1):  # the last column apart: this loop's reads are contiguous
            row[b] = _side(float(min(min(top[b], top[b + 1]), min(bottom[b], bottom[b + 1]))),
                           float(max(max(top[b], top[b + 1]), max(bottom[b], bottom[b + 1]))), hi, lo)
        row[n - 1] = _side(float(min(top[n - 1], bottom[n - 1])), float(max(top[n - 1], bottom[n - 1])), hi, lo)
    return out


@compiled
def _side(smallest: float, largest: float, hi: float, lo: float) -> int:
    """Where values that are convex combinations of some corner values, ``smallest`` and
    ``largest`` the least and greatest of them, lie: 1 all above the band (``hi``), 0 all below it
    (``lo``), by :data:`BLOCK_MARGIN` for the float64 rounding of the combination; 2 otherwise
    (some may lie in or across the band)."""
    if smallest > hi + BLOCK_MARGIN:
        return 1
    if largest < lo - BLOCK_MARGIN:
        return 0
    return 2


@compiled
def _add_item(start: npt.NDArray[np.int64], stop: npt.NDArray[np.int64], kind: npt.NDArray[np.int64], items: int,
              r0: int, r1: int, k: int) -> int:
    """Rows ``r0..r1-1`` of kind ``k`` appended to a group's items (merged into the last one when
    it has the same kind and ends at ``r0``); the new item count."""
    if items > 0 and kind[items - 1] == k:
        stop[items - 1] = r1
        return items
    start[items], stop[items], kind[items] = r0, r1, k
    return items + 1


@compiled
def _band_pixel(v: float, threshold: float, n: int, nx: int, jx: int, dx: float, ny: int, jy: int, dy: float) -> int:
    """Decide a pixel whose float64 value ``v`` lies inside the band: 1 (foreground) or 0 when
    ``v`` is farther from ``threshold`` than PyTorch's value can be from it, else -1 (uncertain).

    ``jx``/``jy`` are the pixel's output indices in the resized ``nx × ny`` box, ``dx``/``dy``
    the neighbour differences it interpolates along x and y. PyTorch's error: each axis' source
    index error (:func:`_index_error`) times that axis' difference, doubled, plus
    :data:`ARITHMETIC_BOUND`; a source index that may round across an integer interpolates
    between other pixels, so that pixel stays uncertain.
    """
    ex, near_x = _index_error(n, nx, jx)
    ey, near_y = _index_error(n, ny, jy)
    if near_x or near_y:
        return -1
    bound = 2.0 * (ex * dx + ey * dy) + ARITHMETIC_BOUND
    if v - threshold > bound:
        return 1
    if threshold - v < bound:
        return -1
    return 0


@compiled
def paste_frame(padded: npt.NDArray[np.float32], grown: npt.NDArray[np.int64], sound: npt.NDArray[np.bool_],
                height: int, width: int, threshold: float,
                ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.uint8],
                           npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """:func:`paste_box` of every instance of a frame, in one call, kept as COCO runs: no pixels.

    ``padded`` is ``float32[K, M+2, M+2]``, ``grown`` ``int64[K, 4]`` integer grown boxes,
    ``sound`` ``bool[K]`` (False: an empty mask). Returns ``(windows, areas, uncertain, text,
    text_offsets, runs, run_offsets)``: ``windows`` ``int64[K, 4]`` as ``(x0, y0, h, w)`` (``h``
    and ``w`` both 0 for an unsound instance or one wholly outside the frame); instance ``i``'s
    COCO compressed counts ``text[text_offsets[i]:text_offsets[i+1]]`` (ASCII) and the same
    counts uncompressed, ``runs[run_offsets[i]:run_offsets[i+1]]`` (run lengths, zeros first,
    over the column-major frame), from which its pixels can be had when wanted
    (:func:`engines.rle_kernels.runs_to_box`). An uncertain instance has neither (the caller
    pastes it again). No pixel is written.
    """
    k = padded.shape[0]
    windows = np.zeros((k, 4), np.int64)
    most = 1
    for i in range(k):
        x0, xe, y0, ye = visible(grown[i, 0], grown[i, 1], grown[i, 2], grown[i, 3], height, width)
        windows[i, 0], windows[i, 1] = x0, y0
        if sound[i] and xe > x0 and ye > y0:
            windows[i, 2], windows[i, 3] = ye - y0, xe - x0
        most = max(most, most_runs(windows[i, 2], windows[i, 3]))
    no_pixels = np.zeros((0, 0), np.bool_)
    areas = np.zeros(k, np.int64)
    uncertain = np.zeros(k, np.bool_)
    text = np.empty(64 * k + 16, np.uint8)
    text_offsets = np.zeros(k + 1, np.int64)
    all_runs = np.empty(most + 512 * k, np.int64)  # each mask's runs are written in place, after the last's
    run_offsets = np.zeros(k + 1, np.int64)
    for i in range(k):
        h, w = windows[i, 2], windows[i, 3]
        start = run_offsets[i]
        all_runs = with_room(all_runs, start, most_runs(h, w))
        area, unsure, runs = _paste_columns(no_pixels, padded[i], grown[i, 0], grown[i, 1], grown[i, 2], grown[i, 3],
                                            windows[i, 0], windows[i, 1], h, w, threshold, height, width,
                                            all_runs[start:])
        areas[i], uncertain[i] = area, unsure
        run_offsets[i + 1] = start + runs
        text, text_offsets[i + 1] = coco_text_into(all_runs[start:start + runs], text, text_offsets[i])
    return windows, areas, uncertain, text[:text_offsets[k]].copy(), text_offsets, all_runs[:run_offsets[k]].copy(), run_offsets


@compiled
def _index_error(n_in: int, n_out: int, j: int) -> tuple[float, bool]:
    """For output index ``j``: a bound on how far PyTorch's float32 source index can lie from the
    exact one, and whether an integer lies within that distance (PyTorch may then interpolate
    between other source pixels: the caller gives up on the pixel).

    PyTorch computes ``scale * (j + 0.5) - 0.5`` in float32 with ``j + 0.5`` and ``scale``
    exact: one or two roundings (FMA or not), each at most ½ ulp of a value no larger than
    ``max(p, 0.5)`` with ``p = scale * (j + 0.5)``, so at most one float32 ulp of it. The clamp
    at 0 only shrinks the distance."""
    p, real = _source_index(n_in, n_out, j)
    _, e = math.frexp(max(p, 0.5))  # max(p, 0.5) = m * 2**e with m in [0.5, 1): float32 ulp 2**(e - 24)
    err = math.ldexp(1.0, e - 24)
    frac = real - math.floor(real)
    return err, real >= 1.0 - err and (frac <= err or frac >= 1.0 - err)
