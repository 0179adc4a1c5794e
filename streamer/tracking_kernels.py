"""Compiled inner loops of the tracker: box IoU, the ambiguous pairs, similarity blending, Kalman steps.

:class:`~streamer.tracking.Tracker` runs once per frame and stream on the event loop; written as
numpy expressions its ~60 small array operations cost more in dispatch than in arithmetic
(0.3 ms per 20-instance frame). Each function here performs *the same float64 operations, in the
same order,* as the numpy expression it replaces — numba compiles without fast-math, so there is
no FMA contraction and no reassociation — and so the tracker's decisions and its filters' states
are unchanged bit for bit. ``tests/streamer/test_tracking_kernels.py`` checks each against its
numpy expression on random inputs, and fails when one operation's order is changed.

They hold the GIL while they run (:func:`~engines.rle_kernels.compiled_with_gil`): each takes
microseconds, and the event loop would otherwise give the interpreter away at every call.

Conventions: boxes are ``float64[N, 4]`` ``(x1, y1, x2, y2)`` px; Kalman states are the
``float64[N, 4]`` arrays of :class:`~streamer.tracking_kalman.BoxKalman` (``(cx, cy, w, h)``
per row), updated in place.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engines.rle_kernels import compiled_with_gil, next_piece


@compiled_with_gil
def _max(x: float, y: float) -> float:
    """``np.maximum`` of two floats (NaN wins, as in numpy)."""
    return x if x != x or x >= y else y


@compiled_with_gil
def _min(x: float, y: float) -> float:
    """``np.minimum`` of two floats (NaN wins, as in numpy)."""
    return x if x != x or x <= y else y


@compiled_with_gil
def box_iou(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """IoU of ``a`` ``[N, 4]`` and ``b`` ``[K, 4]`` boxes ``(x1, y1, x2, y2)``: ``[N, K]`` in [0, 1]
    (0 where the union is empty)."""
    n, k = a.shape[0], b.shape[0]
    out = np.zeros((n, k))
    area_b = np.empty(k)
    for j in range(k):
        area_b[j] = _max(b[j, 2] - b[j, 0], 0.0) * _max(b[j, 3] - b[j, 1], 0.0)
    for i in range(n):
        area_a = _max(a[i, 2] - a[i, 0], 0.0) * _max(a[i, 3] - a[i, 1], 0.0)
        for j in range(k):
            w = _max(_min(a[i, 2], b[j, 2]) - _max(a[i, 0], b[j, 0]), 0.0)
            h = _max(_min(a[i, 3], b[j, 3]) - _max(a[i, 1], b[j, 1]), 0.0)
            inter = w * h
            union = area_a + area_b[j] - inter
            if union > 0:
                out[i, j] = inter / _max(union, 1e-9)
    return out


@compiled_with_gil
def ambiguous_pairs(sim: npt.NDArray[np.float64], pred: npt.NDArray[np.float64], mask_ref: npt.NDArray[np.float64],
                    candidate: float, most: int,
                    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The track/detection pairs whose similarity needs their masks, and each track mask's shift.

    ``sim`` ``[N, K]`` box IoU of the tracks' predicted boxes ``pred`` and the detections; a pair
    is a *candidate* where ``sim > candidate``, *ambiguous* where its row or its column holds two
    candidates or more. Returns ``(rows, cols, dx, dy)`` in row-major order — or, when there are
    more than ``most``, the ``most`` of highest ``sim`` (ties in row-major order) — with the
    shift ``rint(predicted centre - mask_ref)`` (px) that moves track ``rows[i]``'s last mask
    (``mask_ref`` ``[N, 2]``: the box centre where it was taken) to the prediction.
    """
    n, k = sim.shape
    per_row = np.zeros(n, np.int64)
    per_col = np.zeros(k, np.int64)
    for i in range(n):
        for j in range(k):
            if sim[i, j] > candidate:
                per_row[i] += 1
                per_col[j] += 1
    count = 0
    for i in range(n):
        for j in range(k):
            if sim[i, j] > candidate and (per_row[i] > 1 or per_col[j] > 1):
                count += 1
    rows = np.empty(count, np.int64)
    cols = np.empty(count, np.int64)
    count = 0
    for i in range(n):
        for j in range(k):
            if sim[i, j] > candidate and (per_row[i] > 1 or per_col[j] > 1):
                rows[count], cols[count] = i, j
                count += 1
    if count > most:
        values = np.empty(count)
        for p in range(count):
            values[p] = -sim[rows[p], cols[p]]
        top = np.argsort(values, kind="mergesort")[:most]  # stable: ties keep row-major order
        rows, cols = rows[top], cols[top]
    dx = np.empty(rows.shape[0], np.int64)
    dy = np.empty(rows.shape[0], np.int64)
    for p in range(rows.shape[0]):
        r = rows[p]
        dx[p] = int(np.rint((pred[r, 0] + pred[r, 2]) / 2 - mask_ref[r, 0]))
        dy[p] = int(np.rint((pred[r, 1] + pred[r, 3]) / 2 - mask_ref[r, 1]))
    return rows, cols, dx, dy


@compiled_with_gil
def runs_overlap(a: npt.NDArray[np.int64], dx: int, dy: int, b: npt.NDArray[np.int64], height: int) -> int:
    """Pixels set both in mask ``a`` moved by ``(dx, dy)`` px and in mask ``b``, from their COCO
    counts (uncompressed run lengths, column-major, both in frames of ``height`` rows): the
    vertical pieces of foreground of both (:func:`~engines.rle_kernels.next_piece`), walked together column by
    column — work in the number of runs, not of pixels, and nothing allocated. A piece of ``a``
    moved outside the frame meets nothing of ``b``."""
    ia, rest_a, end_a, ca, a0, a1 = next_piece(a, -1, 0, 0, height)
    ib, rest_b, end_b, cb, b0, b1 = next_piece(b, -1, 0, 0, height)
    inter = 0
    while ca >= 0 and cb >= 0:
        col = ca + dx
        if col == cb:
            inter += max(min(a1 + dy, b1) - max(a0 + dy, b0), 0)
            if a1 + dy <= b1:
                ia, rest_a, end_a, ca, a0, a1 = next_piece(a, ia, rest_a, end_a, height)
            else:
                ib, rest_b, end_b, cb, b0, b1 = next_piece(b, ib, rest_b, end_b, height)
        elif col < cb:
            ia, rest_a, end_a, ca, a0, a1 = next_piece(a, ia, rest_a, end_a, height)
        else:
            ib, rest_b, end_b, cb, b0, b1 = next_piece(b, ib, rest_b, end_b, height)
    return inter


@compiled_with_gil
def blend_mask_iou(sim: npt.NDArray[np.float64], rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64],
                   mask_iou: npt.NDArray[np.float64], has: npt.NDArray[np.bool_],
                   track_labels: npt.NDArray[np.int64], labels: npt.NDArray[np.int64], class_change: float) -> None:
    """In place: ``sim[r, c] = (sim[r, c] + mask_iou) / 2`` for each pair that ``has`` both masks,
    then every entry times ``class_change`` where the track's label differs from the detection's
    (times 1.0 where they agree, as the numpy expression does)."""
    for p in range(rows.shape[0]):
        if has[p]:
            sim[rows[p], cols[p]] = 0.5 * (sim[rows[p], cols[p]] + mask_iou[p])
    for i in range(sim.shape[0]):
        for j in range(sim.shape[1]):
            sim[i, j] *= 1.0 if track_labels[i] == labels[j] else class_change


@compiled_with_gil
def apply_matches(rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64], with_mask: npt.NDArray[np.bool_],
                  dets: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], areas: npt.NDArray[np.int64],
                  now: float, last_seen: npt.NDArray[np.float64], hits: npt.NDArray[np.int64],
                  track_labels: npt.NDArray[np.int64], mask_areas: npt.NDArray[np.int64],
                  mask_ref: npt.NDArray[np.float64], ids: npt.NDArray[np.int64], min_hits: int, next_id: int,
                  out: npt.NDArray[np.int64]) -> tuple[int, int]:
    """Record matched pairs (track ``rows[m]``, distinct, with detection ``cols[m]``), in place:
    the track was seen ``now``, one more hit, the detection's label, and — where the detection
    has a mask (``with_mask[m]``) — its mask area and box centre (``mask_ref``). A tentative track
    reaching ``min_hits`` takes the next id, in pair order. ``out[cols[m]]`` is the track's id
    (-1 while tentative). Returns ``(tracks confirmed, next id)``."""
    started = 0
    for m in range(rows.shape[0]):
        r, d = rows[m], cols[m]
        last_seen[r] = now
        hits[r] += 1
        track_labels[r] = labels[d]
        if with_mask[m]:
            mask_areas[r] = areas[d]
            mask_ref[r, 0] = (dets[d, 0] + dets[d, 2]) / 2
            mask_ref[r, 1] = (dets[d, 1] + dets[d, 3]) / 2
        if ids[r] < 0 and hits[r] >= min_hits:
            ids[r] = next_id
            next_id += 1
            started += 1
        out[d] = ids[r]
    return started, next_id


@compiled_with_gil
def kalman_predict(x: npt.NDArray[np.float64], v: npt.NDArray[np.float64], p00: npt.NDArray[np.float64],
                   p01: npt.NDArray[np.float64], p11: npt.NDArray[np.float64], accel_std: float, dt: float,
                   dt3: float) -> None:
    """:meth:`~streamer.tracking_kalman.BoxKalman.predict` in place (``dt3 = dt ** 3`` as Python
    computes it: ``pow``, which need not equal ``dt * dt * dt``)."""
    two_dt, dt2 = 2 * dt, dt * dt
    for i in range(x.shape[0]):
        s = accel_std * np.sqrt(_max(x[i, 2], 1.0) * _max(x[i, 3], 1.0))
        q = s * s
        for j in range(4):
            xj = x[i, j] + v[i, j] * dt
            x[i, j] = _max(xj, 1.0) if j >= 2 else xj
            a00, a01, a11 = p00[i, j], p01[i, j], p11[i, j]
            p00[i, j] = a00 + two_dt * a01 + dt2 * a11 + q * dt3 / 3
            p01[i, j] = a01 + dt * a11 + q * dt * dt / 2
            p11[i, j] = a11 + q * dt


@compiled_with_gil
def kalman_update(x: npt.NDArray[np.float64], v: npt.NDArray[np.float64], p00: npt.NDArray[np.float64],
                  p01: npt.NDArray[np.float64], p11: npt.NDArray[np.float64], rows: npt.NDArray[np.int64],
                  boxes: npt.NDArray[np.float64], meas_std: float) -> None:
    """:meth:`~streamer.tracking_kalman.BoxKalman.update` in place: filters ``rows`` (distinct)
    corrected with measured ``boxes`` ``[m, 4]`` ``(x1, y1, x2, y2)``."""
    z = np.empty(4)
    for m in range(rows.shape[0]):
        i = rows[m]
        z[0], z[1] = (boxes[m, 0] + boxes[m, 2]) / 2, (boxes[m, 1] + boxes[m, 3]) / 2
        z[2], z[3] = boxes[m, 2] - boxes[m, 0], boxes[m, 3] - boxes[m, 1]
        s = meas_std * np.sqrt(_max(z[2], 1.0) * _max(z[3], 1.0))
        r = s * s
        for j in range(4):
            a00, a01 = p00[i, j], p01[i, j]
            total = a00 + r
            k0, k1 = a00 / total, a01 / total
            innov = z[j] - x[i, j]
            x[i, j] = x[i, j] + k0 * innov
            v[i, j] = v[i, j] + k1 * innov
            p00[i, j] = (1 - k0) * a00
            p01[i, j] = (1 - k0) * a01
            p11[i, j] = p11[i, j] - k1 * a01


@compiled_with_gil
def kalman_boxes(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``[N, 4]`` boxes ``(x1, y1, x2, y2)`` of states ``x`` ``[N, 4]`` ``(cx, cy, w, h)``."""
    out = np.empty((x.shape[0], 4))
    for i in range(x.shape[0]):
        hw, hh = x[i, 2] / 2, x[i, 3] / 2
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = x[i, 0] - hw, x[i, 1] - hh, x[i, 0] + hw, x[i, 1] + hh
    return out
