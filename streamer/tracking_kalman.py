"""Constant-velocity Kalman filters of track boxes, vectorised over tracks (numpy only).

Each track's box ``(cx, cy, w, h)`` (px) is four independent filters of state ``(position,
velocity)`` (px, px/s) with white-noise acceleration. The model's matrices are block-diagonal
per coordinate, so the exact Kalman equations reduce to elementwise arithmetic on ``[N, 4]``
arrays: ``x`` (position), ``v`` (velocity) and the covariance entries ``p00``, ``p01``,
``p11``. With ``dt`` in seconds between frames:

    predict:  x += v dt;  P = F P F' + q [[dt³/3, dt²/2], [dt²/2, dt]],  F = [[1, dt], [0, 1]]
    update:   s = p00 + r;  gain (p00, p01) / s;  x, v += gain (z - x);  P = (I - K H) P

Noise scales with the box size ``s = sqrt(w h)`` (px), as in SORT/ByteTrack: measurement
std ``MEAS_STD * s``, acceleration density ``(ACCEL_STD * s)²``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

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
        """Advance every filter by ``dt`` seconds (> 0)."""
        q = (ACCEL_STD * _size(self.x)) ** 2
        self.x = self.x + self.v * dt
        self.x[:, 2:] = np.maximum(self.x[:, 2:], 1.0)
        self.p00 = self.p00 + 2 * dt * self.p01 + dt * dt * self.p11 + q * dt ** 3 / 3
        self.p01 = self.p01 + dt * self.p11 + q * dt * dt / 2
        self.p11 = self.p11 + q * dt

    def update(self, rows: npt.NDArray[np.intp], boxes: npt.NDArray[np.float64]) -> None:
        """Correct filters ``rows`` ``[m]`` with measured ``boxes`` ``[m, 4]`` ``(x1, y1, x2, y2)``."""
        z = to_cxcywh(boxes)
        x, v = self.x[rows], self.v[rows]
        p00, p01, p11 = self.p00[rows], self.p01[rows], self.p11[rows]
        r = (MEAS_STD * _size(z)) ** 2
        s = p00 + r
        k0, k1 = p00 / s, p01 / s
        innov = z - x
        self.x[rows] = x + k0 * innov
        self.v[rows] = v + k1 * innov
        self.p00[rows] = (1 - k0) * p00
        self.p01[rows] = (1 - k0) * p01
        self.p11[rows] = p11 - k1 * p01

    def boxes(self) -> npt.NDArray[np.float64]:
        """``[N, 4]`` current (predicted) boxes ``(x1, y1, x2, y2)``."""
        half = self.x[:, 2:] / 2
        return np.concatenate([self.x[:, :2] - half, self.x[:, :2] + half], axis=1)

    def keep(self, keep: npt.NDArray[np.bool_]) -> None:
        """Keep the filters where ``keep`` ``[N]`` is True."""
        self.x, self.v = self.x[keep], self.v[keep]
        self.p00, self.p01, self.p11 = self.p00[keep], self.p01[keep], self.p11[keep]
