"""Synthetic shape videos: objects move, rotate, enter and leave; H.264 MP4 plus per-frame COCO GT.

    gt = generate_video("demo.mp4", seed=7, seconds=4)              # returns the COCO GT
    gt = generate_video("demo.mp4", seed=7, gt_path="demo.json")    # and writes it as JSON

Frame ``i`` of the file is COCO image id ``i`` (``frame_index`` i, ``pts`` i / fps seconds). The
ground truth describes the rendered RGB frames; the encoded file is lossy (yuv420p, ``crf``), so
colours differ slightly while the shapes stay put.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from tools.scenes.ground_truth import GroundTruthBuilder
from tools.scenes.shapes import Scene, Shape, distinct_color, make_background, random_shape, render

NOISE_MARGIN = 32
"""Per-frame sensor noise is a random window of one pre-drawn field this much larger per side."""


@dataclass(frozen=True)
class Mover:
    """A tracked shape with its motion: ``velocity`` ``(dx, dy)`` px/frame, ``spin`` rad/frame."""

    track_id: int
    shape: Shape
    velocity: tuple[float, float]
    spin: float

    def step(self) -> Mover:
        """This mover one frame later."""
        moved = self.shape.moved(self.velocity[0], self.velocity[1], self.spin)
        return Mover(self.track_id, moved, self.velocity, self.spin)

    def gone(self, height: int, width: int) -> bool:
        """True once the shape is wholly outside the frame and moving away from it."""
        (cx, cy), r = self.shape.center, self.shape.radius
        vx, vy = self.velocity
        return (
            (cx + r < 0 and vx <= 0)
            or (cx - r > width and vx >= 0)
            or (cy + r < 0 and vy <= 0)
            or (cy - r > height and vy >= 0)
        )


def _motion(rng: np.random.Generator) -> tuple[tuple[float, float], float]:
    """A random velocity (0.5..4 px/frame, any direction) and spin (up to ±0.06 rad/frame)."""
    speed, heading = rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
    return (float(speed * np.cos(heading)), float(speed * np.sin(heading))), float(
        rng.uniform(-0.06, 0.06)
    )


def _entering(
    rng: np.random.Generator, height: int, width: int, shape: Shape, track_id: int
) -> Mover:
    """``shape`` moved just outside a random edge, heading into the frame."""
    r = shape.radius
    edge = int(rng.integers(4))
    along_x, along_y = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
    center, target = (
        [(along_x, -r), (along_x, height + r), (-r, along_y), (width + r, along_y)][edge],
        (
            rng.uniform(0.2, 0.8) * width,
            rng.uniform(0.2, 0.8) * height,
        ),
    )
    direction = np.subtract(target, center)
    speed = rng.uniform(0.8, 4.0)
    velocity = direction / np.linalg.norm(direction) * speed
    _, spin = _motion(rng)
    moved = shape.moved(center[0] - shape.center[0], center[1] - shape.center[1], 0.0)
    return Mover(track_id, moved, (float(velocity[0]), float(velocity[1])), spin)


def _recolored(
    rng: np.random.Generator, shape: Shape, background: npt.NDArray[np.float32], others: list[Mover]
) -> Shape:
    """``shape`` with a colour distinct from the background mean and the ``others``' colours."""
    avoid = [background.reshape(-1, 3).mean(0).astype(np.float64)]
    avoid += [np.asarray(m.shape.color, dtype=np.float64) for m in others]
    return Shape(
        shape.label,
        shape.center,
        shape.radius,
        shape.angle,
        distinct_color(rng, avoid),
        shape.params,
    )


def video_scenes(
    seed: int, width: int = 640, height: int = 360, frames: int = 250
) -> Iterator[tuple[Scene, npt.NDArray[np.int64]]]:
    """The rendered frames of video ``seed`` with each instance's track id ``int64 [K]``.

    Deterministic by seed. 3..7 shapes start in the frame; whenever one has left, a new one (a
    new track id) enters from an edge, drawn on top, so the number of objects stays roughly steady
    and every clip has objects entering and leaving. The background is static; sensor noise
    changes every frame.
    """
    rng = np.random.default_rng(seed)
    background = make_background(rng, height, width)
    movers: list[Mover] = []
    for track_id in range(int(rng.integers(3, 8))):
        velocity, spin = _motion(rng)
        shape = _recolored(rng, random_shape(rng, height, width), background, movers)
        movers.append(Mover(track_id, shape, velocity, spin))
    next_id = len(movers)
    sigma = float(rng.uniform(1, 5))
    field = rng.normal(
        0, sigma, size=(height + 2 * NOISE_MARGIN, width + 2 * NOISE_MARGIN, 3)
    ).astype(np.float32)
    for _ in range(frames):
        dy, dx = (int(v) for v in rng.integers(0, 2 * NOISE_MARGIN + 1, size=2))
        scene = render(
            [m.shape for m in movers], background, field[dy : dy + height, dx : dx + width]
        )
        yield scene, np.asarray([movers[i].track_id for i in scene.sources], dtype=np.int64)
        stepped = [m.step() for m in movers]
        movers = [m for m in stepped if not m.gone(height, width)]
        for _ in range(len(stepped) - len(movers)):
            fresh = _recolored(rng, random_shape(rng, height, width), background, movers)
            movers.append(_entering(rng, height, width, fresh, next_id))
            next_id += 1


def generate_video(
    path: str | Path,
    seed: int,
    width: int = 640,
    height: int = 360,
    fps: int = 25,
    seconds: float = 10.0,
    crf: int = 20,
    gt_path: str | Path | None = None,
) -> dict[str, Any]:
    """Encode video ``seed`` as H.264 MP4 (libx264, yuv420p) at ``path``; return its COCO GT.

    ``width`` and ``height`` must be even (yuv420p). The GT has one image per frame (id = frame
    index, with ``frame_index`` and ``pts`` in seconds), annotations carry ``track_id``, and it is
    also written to ``gt_path`` as JSON when given.
    """
    if width % 2 or height % 2 or width <= 0 or height <= 0:
        raise ValueError(f"yuv420p needs a positive even frame size; got {width}x{height}")
    frames = round(fps * seconds)
    if frames < 1:
        raise ValueError(f"fps * seconds must give at least one frame; got {fps} * {seconds}")
    path = Path(path)
    gt = GroundTruthBuilder()
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for index, (scene, track_ids) in enumerate(video_scenes(seed, width, height, frames)):
            gt.add(
                scene.masks,
                scene.labels,
                file_name=path.name,
                extra={"frame_index": index, "pts": index / fps},
                track_ids=track_ids,
            )
            frame = av.VideoFrame.from_ndarray(scene.image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = {
        "description": f"synthetic shapes video, seed {seed}",
        "video": path.name,
        "fps": fps,
        "frames": frames,
        "width": width,
        "height": height,
        "seed": seed,
    }
    coco = gt.to_dict(info)
    if gt_path is not None:
        Path(gt_path).write_text(json.dumps(coco))
    return coco
