"""Compiled box arithmetic of the host paste: torchvision's grown integer boxes, and the frame
pixels a box covers.

Pure functions on integer and float32 box coordinates (xyxy, frame pixels), kept apart from the
mask kernels (:mod:`engines.mask_kernels`) that use them: the exact float32 operation order of
torchvision's ``expand_boxes`` is the numerics that bites here, and
``tests/engines/test_mask_kernels.py`` compares :func:`grown_boxes` with torchvision's arithmetic
on random boxes, NaN and infinities included.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engines.rle_kernels import compiled


@compiled
def grown_boxes(boxes: npt.NDArray[np.float32], scale: float) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """torchvision's integer grown boxes of ``float32[K, 4]`` xyxy ``boxes``, and which are sound.

    Each box is scaled about its centre by ``scale`` in float32, operation by operation as
    torchvision's ``expand_boxes`` (``(x2 - x1) * 0.5 * scale``, ``(x2 + x1) * 0.5``, then centre
    ∓ half; no fused multiply-add: compiled without fast-math), and truncated towards zero to
    ``int64``. *Sound*: every coordinate finite and ``x2 >= x1``, ``y2 >= y1``; an unsound box is
    grown from its coordinates with NaN as 0 and ±inf as the float32 extremes (``nan_to_num``), and
    a value outside the ``int64`` range (or NaN) becomes ``-2**63`` (x86's conversion). Returns
    ``(int64[K, 4], bool[K])``.
    """
    k = boxes.shape[0]
    grown = np.empty((k, 4), np.int64)
    sound = np.empty(k, np.bool_)
    s = np.float32(scale)
    half = np.float32(0.5)
    big = np.float32(np.finfo(np.float32).max)
    b = np.empty(4, np.float32)  # one box's coordinates, NaN and ±inf replaced
    for i in range(k):
        finite = True
        for j in range(4):
            v = boxes[i, j]
            if np.isnan(v):
                v, finite = np.float32(0.0), False
            elif np.isinf(v):
                v, finite = (big if v > 0 else -big), False
            b[j] = v
        sound[i] = finite and boxes[i, 2] >= boxes[i, 0] and boxes[i, 3] >= boxes[i, 1]
        w_half = (b[2] - b[0]) * half * s
        h_half = (b[3] - b[1]) * half * s
        x_c = (b[2] + b[0]) * half
        y_c = (b[3] + b[1]) * half
        grown[i, 0] = _truncate(x_c - w_half)
        grown[i, 1] = _truncate(y_c - h_half)
        grown[i, 2] = _truncate(x_c + w_half)
        grown[i, 3] = _truncate(y_c + h_half)
    return grown, sound


@compiled
def _truncate(v: float) -> int:
    """``v`` truncated towards zero to int64; ``-2**63`` when NaN or out of range (as x86 converts)."""
    if not (-9.223372036854775808e18 <= v < 9.223372036854775808e18):
        return -9223372036854775808
    return int(v)


@compiled
def visible(x1: int, y1: int, x2: int, y2: int, height: int, width: int) -> tuple[int, int, int, int]:
    """``(x0, xe, y0, ye)``: the frame pixels ``[y0:ye, x0:xe]`` an integer box (inclusive ends) covers."""
    return (min(max(x1, 0), width), min(max(x2 + 1, 0), width),
            min(max(y1, 0), height), min(max(y2 + 1, 0), height))
