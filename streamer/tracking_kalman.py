"""Constant-velocity Kalman filters of track boxes, vectorised over tracks.

Each track's box ``(cx, cy, w, h)`` (px) is four independent filters of state ``(position,
velocity)`` (px, px/s) with white-noise acceleration. The model's matrices are block-diagonal
per coordinate, so the exact Kalman equations reduce to elementwise arithmetic on ``[N, 4]``
arrays: ``x`` (position), ``v`` (velocity) and the covariance entries ``p00``, ``p01``,
``p11``. With ``dt`` in seconds between frames:

    predict:  x += v dt;  P = F P F' + q [[dt³/3, dt²/2], [dt²/2, dt]],  F = [[1, dt], [0, 1]]
    update:   s = p00 + r;  gain (p00, p01) / s;  x, v += gain (z - x);  P = (I - K H) P

Noise scales with the box size ``s = sqrt(w h)`` (px), as in SORT/ByteTrack: measurement
std ``MEAS_STD * s``, acceleration density ``(ACCEL_STD * s)²``.

``predict``, ``update`` and ``boxes`` run as compiled loops (:mod:`streamer.tracking_kernels`)
that do the arithmetic written in their docstrings, operation for operation.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from streamer.tracking_kernels import kalman_boxes, kalman_predict, kalman_update

MEAS_STD = 0.05
"""Measurement noise std, as a fraction of the box size (px / px)."""
ACCEL_STD = 2.0
"""White-noise acceleration std, box sizes per s² (per sqrt(s))."""
INIT_VEL_STD = 10.0
"""Initial velocity std, box sizes per second: the second detection sets the velocity."""


def _size(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``[N, 1]`` box size ``sqrt(w h)`` px (at least 1)."""
    return np.sqrt(np.maximum(x[:, 2:3], 1.0) * np.maximum(x[:, 3:4], 1.0))


def to_cxcywh(boxes: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``[N, 4]`` ``(x1, y1, x2, y2)`` → ``(cx, cy, w, h)``."""
    return np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)


class BoxKalman:
    """The box filters of N tracks; rows follow the tracker's track order."""

    def __init__(self) -> None:
        self.x = np.zeros((0, 4))
        self.v = np.zeros((0, 4))
        self.p00 = np.zeros((0, 4))
        self.p01 = np.zeros((0, 4))
        self.p11 = np.zeros((0, 4))

    def __len__(self) -> int:
        return len(self.x)

    def add(self, boxes: npt.NDArray[np.float64]) -> None:
        """Start filters at ``boxes`` ``[n, 4]`` ``(x1, y1, x2, y2)``, velocity 0 (uncertain)."""
        x = to_cxcywh(boxes)
        s = _size(x)
        n = len(x)
        self.x = np.concatenate([self.x, x])
        self.v = np.concatenate([self.v, np.zeros((n, 4))])
        self.p00 = np.concatenate([self.p00, np.broadcast_to((2 * MEAS_STD * s) ** 2, (n, 4))])
        self.p01 = np.concatenate([self.p01, np.zeros((n, 4))])
        self.p11 = np.concatenate([self.p11, np.broadcast_to((INIT_VEL_STD * s) ** 2, (n, 4))])

    def predict(self, dt: float) -> None:
        """Advance every filter by ``dt`` seconds (> 0), in place::

            q = (ACCEL_STD * _size(x)) ** 2
            x = x + v * dt;  x[:, 2:] = np.maximum(x[:, 2:], 1.0)
            p00 = p00 + 2 * dt * p01 + dt * dt * p11 + q * dt ** 3 / 3
            p01 = p01 + dt * p11 + q * dt * dt / 2
            p11 = p11 + q * dt
        """
        kalman_predict(self.x, self.v, self.p00, self.p01, self.p11, ACCEL_STD, float(dt), float(dt) ** 3)

    def update(self, rows: npt.NDArray[np.intp], boxes: npt.NDArray[np.float64]) -> None:
        """Correct filters ``rows`` ``[m]`` (distinct) with measured ``boxes`` ``[m, 4]`` ``(x1, y1, x2, y2)``,
        in place::

            z = to_cxcywh(boxes);  r = (MEAS_STD * _size(z)) ** 2;  s = p00 + r
            k0, k1 = p00 / s, p01 / s
            x, v = x + k0 * (z - x), v + k1 * (z - x)
            p00, p01, p11 = (1 - k0) * p00, (1 - k0) * p01, p11 - k1 * p01
        """
        kalman_update(self.x, self.v, self.p00, self.p01, self.p11, np.asarray(rows, dtype=np.int64),
                      np.ascontiguousarray(boxes, dtype=np.float64), MEAS_STD)

    def boxes(self) -> npt.NDArray[np.float64]:
        """``[N, 4]`` current (predicted) boxes ``(x1, y1, x2, y2)``: centre ∓ half the size."""
        return kalman_boxes(self.x)

    def keep(self, keep: npt.NDArray[np.bool_]) -> None:
        """Keep the filters where ``keep`` ``[N]`` is True."""
        self.x, self.v = self.x[keep], self.v[keep]
        self.p00, self.p01, self.p11 = self.p00[keep], self.p01[keep], self.p11[keep]
