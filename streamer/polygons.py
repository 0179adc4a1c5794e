"""Outer contours of binary masks as polygons (the ``--mask-encoding polygon`` output).

Contours follow pixel edges ("crack following"): pixel ``(row r, col c)`` is the unit
square ``[c, c+1] x [r, r+1]``, so every vertex is an integer pixel corner and the polygon
encloses exactly the pixels of one 4-connected component (holes filled: holes are not
output). Pixels touching only diagonally belong to separate polygons. Vertices are kept
only where the contour turns, so a rectangle of any size is 4 points.

Self-written (numpy + one pass over the boundary) rather than scikit-image's marching
squares, to keep scikit-image out of the runtime dependencies and to get exact,
pixel-aligned outlines instead of half-pixel iso-lines.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Directions of travel along pixel edges, clockwise on screen (x right, y down): turning
# right is ``(d + 1) % 4``. Edges are oriented so the foreground is on the right-hand side,
# which makes outer contours clockwise on screen (positive shoelace area) and holes negative.
_EAST, _SOUTH, _WEST, _NORTH = 0, 1, 2, 3


def mask_to_polygons(mask: npt.NDArray[np.bool_]) -> list[list[float]]:
    """Outer contours of ``mask`` (``bool[H, W]``) as flat ``[x0, y0, x1, y1, ...]`` polygons.

    One polygon per 4-connected foreground component, in raster order of each component's
    top-left pixel. Coordinates are pixel-corner positions in ``[0, W] x [0, H]`` (floats
    holding integers); each polygon has at least 4 vertices, clockwise on screen, not closed
    (the first vertex is not repeated). An empty mask gives ``[]``.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D bool[H, W], got shape {mask.shape}")
    m = np.pad(mask.astype(bool), 1)
    fg = m[1:-1, 1:-1]
    width = fg.shape[1] + 1  # vertices per row: x in [0, W]
    starts, ends, dirs = _boundary_edges(fg, m, width)
    if starts.size == 0:
        return []
    outgoing: dict[int, list[int]] = {}
    for i, s in enumerate(starts.tolist()):
        outgoing.setdefault(s, []).append(i)
    used = np.zeros(starts.size, dtype=bool)
    polygons: list[list[float]] = []
    for first in np.argsort(starts, kind="stable").tolist():
        if used[first]:
            continue
        corners = _trace_loop(first, starts, ends, dirs, outgoing, used)
        xs = np.array([k % width for k in corners], dtype=np.float64)
        ys = np.array([k // width for k in corners], dtype=np.float64)
        area2 = float(np.dot(xs, np.roll(ys, -1)) - np.dot(np.roll(xs, -1), ys))
        if area2 > 0:  # clockwise on screen: an outer contour; holes are negative
            polygons.append(np.stack([xs, ys], axis=1).ravel().tolist())
    return polygons


def _boundary_edges(fg: npt.NDArray[np.bool_], padded: npt.NDArray[np.bool_], width: int
                    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Unit edges between foreground and background pixels, foreground on the right.

    Returns ``(start, end, direction)`` int64 arrays; vertices are keys ``y * width + x``.
    """
    above, below = padded[:-2, 1:-1], padded[2:, 1:-1]
    left, right = padded[1:-1, :-2], padded[1:-1, 2:]
    parts = []
    # (neighbour, start corner offset (dx, dy), end corner offset, direction) per pixel side.
    for neighbour, (sx, sy), (ex, ey), d in (
        (above, (0, 0), (1, 0), _EAST),
        (right, (1, 0), (1, 1), _SOUTH),
        (below, (1, 1), (0, 1), _WEST),
        (left, (0, 1), (0, 0), _NORTH),
    ):
        r, c = np.nonzero(fg & ~neighbour)
        parts.append(((r + sy) * width + (c + sx), (r + ey) * width + (c + ex),
                      np.full(r.shape, d, dtype=np.int64)))
    starts = np.concatenate([p[0] for p in parts]).astype(np.int64)
    ends = np.concatenate([p[1] for p in parts]).astype(np.int64)
    dirs = np.concatenate([p[2] for p in parts])
    return starts, ends, dirs


def _trace_loop(first: int, starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64],
                dirs: npt.NDArray[np.int64], outgoing: dict[int, list[int]],
                used: npt.NDArray[np.bool_]) -> list[int]:
    """Follow edges from edge ``first`` back to its start; the vertex keys where the direction changes.

    At a vertex with two outgoing edges (diagonal pixels) the right turn is taken, which keeps
    diagonal neighbours in separate loops (4-connectivity).
    """
    corners: list[int] = []
    edge = first
    prev_dir = int(dirs[first]) - 1  # pretend we turned into the first edge: its start is a corner
    while not used[edge]:
        used[edge] = True
        d = int(dirs[edge])
        if d != prev_dir:
            corners.append(int(starts[edge]))
        prev_dir = d
        options = outgoing[int(ends[edge])]
        if len(options) == 1:
            edge = options[0]
        else:
            right_turn = (d + 1) % 4
            edge = next(o for o in options if int(dirs[o]) == right_turn)
    # The loop closed on ``first``; its start is a corner only if the direction changes there.
    if int(dirs[first]) == prev_dir and len(corners) > 1:
        corners.pop(0)
    return corners
