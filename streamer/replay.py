"""Inputs for measuring the pipeline without the model: a replay runner and synthetic video.

:class:`ReplayRunner` returns, for every frame, ``K`` realistic detections at once: boxes of
camera-like sizes (log-uniform, 2 %–30 % of the frame side), soft elliptic 28×28 mask
probabilities with a noisy rim (values cross the 0.5 threshold as a real mask head's do), scores
spread over (0.5, 1]; the boxes move from one frame to the next as a camera's objects do. It
costs nothing, so a benchmark that uses it measures everything but the model. :func:`write_synthetic_video` encodes an H.264 clip of moving shapes over a textured
background with sensor noise, as a camera would send it (libx264, CABAC on, yuv420p, a few
Mbit/s at 1080p: the noise is what makes a camera's P-frames cost bits and decode time).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from engines.runner import Detections, ModelInfo, Runner

REPLAY_CLASSES = ("__background__", "person", "car", "bicycle", "dog")


def synthetic_detections(k: int, height: int, width: int, seed: int = 0) -> Detections:
    """``k`` realistic detections on an ``height × width`` frame (see the module docstring)."""
    rng = np.random.default_rng(seed)
    side = min(height, width)
    wh = np.exp(rng.uniform(np.log(0.02 * side), np.log(0.3 * side), (k, 2))) * rng.uniform(0.6, 1.6, (k, 2))
    x1 = rng.uniform(0, np.maximum(width - wh[:, 0], 1))
    y1 = rng.uniform(0, np.maximum(height - wh[:, 1], 1))
    boxes = np.stack([x1, y1, np.minimum(x1 + wh[:, 0], width), np.minimum(y1 + wh[:, 1], height)], 1)
    yy, xx = np.mgrid[:28, :28] / 27.0 * 2 - 1
    probs = np.empty((k, 28, 28), np.float32)
    for i in range(k):
        ax, ay = rng.uniform(0.5, 0.95, 2)
        r = np.hypot(xx / ax, yy / ay) + rng.normal(0, 0.08, (28, 28))
        probs[i] = 1 / (1 + np.exp((r - 1) * 8))
    scores = np.sort(rng.uniform(0.5, 1.0, k))[::-1].astype(np.float32)
    return Detections(boxes.astype(np.float32), scores, rng.integers(1, len(REPLAY_CLASSES), k), probs,
                      (height, width))


class ReplayRunner(Runner):
    """A runner that answers every frame with the same ``k`` synthetic instances for its size, moving.

    Each box drifts at its own velocity (up to ``speed_px`` pixels per frame along each axis) and
    bounces off the frame's edges; its mask, label and score stay. So consecutive frames differ as
    a camera's do — boxes a fraction of a pixel to a few pixels apart, tracks that persist — and
    the postprocess step cannot profit from seeing one frame over and over: the paste kernel costs
    ~1.7× more on frames that differ than on one frame repeated (the CPU's branch predictor learns
    a repeated frame). The motion counts the frames this runner answered, whatever their stream.
    ``speed_px=0``: the same detections for every frame.

    ``paste_device`` (e.g. ``"cuda"``): paste the masks there, as a CUDA runner does
    (``Detections.pasted`` at ``paste_threshold``).
    """

    def __init__(self, k: int = 20, seed: int = 0, paste_device: str | None = None,
                 paste_threshold: float = 0.5, speed_px: float = 1.0) -> None:
        self.k, self.seed, self.speed_px = k, seed, speed_px
        self.paste_device, self.paste_threshold = paste_device, paste_threshold
        self.info = ModelInfo(name=f"replay-{k}", backend="replay", device=paste_device or "cpu",
                              class_names=REPLAY_CLASSES)
        self._by_size: dict[tuple[int, int], tuple[Detections, BoxMotion]] = {}
        self._on_device: dict[tuple[int, int], Any] = {}
        self._answered = 0

    def infer(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        out = []
        for f in frames:
            size = (int(f.shape[0]), int(f.shape[1]))
            if size not in self._by_size:
                rng = np.random.default_rng(self.seed + 1)
                velocity = rng.uniform(-self.speed_px, self.speed_px, (self.k, 2))
                d = synthetic_detections(self.k, *size, seed=self.seed)
                self._by_size[size] = (d, BoxMotion(d.boxes, velocity, *size))
            d, motion = self._by_size[size]
            boxes = motion.at(self._answered)
            self._answered += 1
            det = Detections(boxes, d.scores, d.labels, d.mask_probs, d.image_size)
            if self.paste_device is not None:
                import torch

                from engines.masks import paste_boxes

                if size not in self._on_device:
                    self._on_device[size] = torch.from_numpy(d.mask_probs).to(self.paste_device)
                det.pasted = (self.paste_threshold, paste_boxes(
                    self._on_device[size], torch.from_numpy(boxes).to(self.paste_device), *size, self.paste_threshold))
            out.append(det)
        return out


class BoxMotion:
    """Boxes drifting at constant velocities, bouncing off the frame's edges: each box's top-left
    corner goes back and forth over ``[0, frame side - box side]`` (a triangle wave), its size
    unchanged. What depends only on the boxes is computed once; :meth:`at` costs a few µs."""

    def __init__(self, boxes: npt.NDArray[np.float32], velocity: npt.NDArray[np.float64], height: int,
                 width: int) -> None:
        b = boxes.astype(np.float64)
        self.corner, self.size, self.velocity = b[:, :2], b[:, 2:] - b[:, :2], velocity
        self.room = np.maximum(np.array([width, height], np.float64) - self.size, 0.0)
        self.moves = self.room > 0
        self.span = np.where(self.moves, 2 * self.room, 1.0)

    def at(self, t: float) -> npt.NDArray[np.float32]:
        """``float32[K, 4]`` xyxy boxes after ``t`` frames."""
        corner = np.mod(self.corner + self.velocity * t, self.span)
        corner = np.where(self.moves, self.room - np.abs(corner - self.room), self.corner)
        out = np.empty((len(corner), 4), np.float32)
        out[:, :2], out[:, 2:] = corner, corner + self.size
        return out


def write_synthetic_video(path: Path, frames: int, width: int = 1920, height: int = 1080, fps: int = 25,
                          seed: int = 0, bitrate_mbps: float = 4.0) -> Path:
    """An H.264 (CABAC, yuv420p) mp4 of ``frames`` frames at ``bitrate_mbps``: shapes moving over a
    textured background with sensor noise (σ = 4 grey levels)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    background = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:height, :width]
    shapes = [(rng.integers(0, width), rng.integers(0, height), rng.integers(40, 300), rng.integers(40, 300),
               rng.integers(-12, 12), rng.integers(-8, 8), rng.integers(0, 255, 3)) for _ in range(12)]
    noise = [rng.normal(0, 4, (height, width, 3)).astype(np.int16) for _ in range(4)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = int(bitrate_mbps * 1e6)  # a camera's constant bitrate, not constant quality
        stream.options = {"preset": "veryfast"}
        for i in range(frames):
            img = background.copy()
            for x, y, w, h, vx, vy, colour in shapes:
                cx, cy = int((x + vx * i) % width), int((y + vy * i) % height)
                img[cy:cy + h, cx:cx + w] = colour
            img = np.clip(img + noise[i % len(noise)], 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
