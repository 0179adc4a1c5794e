"""Synthetic "shapes" scenes: filled circles, squares, triangles and stars over varied backgrounds.

Coordinates are continuous pixels: pixel ``(row r, col c)`` covers ``[c, c+1) x [r, r+1)`` and is
inside a shape when its centre ``(c + 0.5, r + 0.5)`` is. Masks are exact (no anti-aliasing): the
pixels painted with a shape's colour are exactly that shape's mask, so the visible mask of an
instance is the set of pixels whose topmost painted shape is that instance (paint order = depth).

Everything is numpy and deterministic given a ``np.random.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

CLASS_NAMES: tuple[str, ...] = ("__background__", "circle", "square", "triangle", "star")
"""Label ``i`` is ``CLASS_NAMES[i]``; 0 is background, instances use 1..4."""

MIN_VISIBLE_AREA = 30
"""Instances with fewer visible pixels than this are dropped from the ground truth."""

MIN_SIZE, MAX_SIZE = 15.0, 160.0
"""Shape sizes (circumscribed-circle diameter, px) are log-uniform in this range."""

BACKGROUNDS = ("gradient", "noise", "texture")


@dataclass(frozen=True)
class Shape:
    """One filled shape.

    ``center`` is ``(x, y)`` px, ``radius`` the circumscribed-circle radius px, ``angle`` radians,
    ``color`` RGB 0..255. ``params`` holds class-specific geometry: for triangles the three vertex
    angle offsets (radians), for stars the inner/outer radius ratio; unused otherwise.
    """

    label: int
    center: tuple[float, float]
    radius: float
    angle: float
    color: tuple[int, int, int]
    params: tuple[float, ...] = ()

    def moved(self, dx: float, dy: float, dangle: float) -> Shape:
        """This shape translated by ``(dx, dy)`` px and rotated by ``dangle`` radians."""
        return replace(
            self, center=(self.center[0] + dx, self.center[1] + dy), angle=self.angle + dangle
        )


@dataclass(frozen=True)
class Scene:
    """A rendered image with its visible instances.

    ``image`` uint8 ``[H, W, 3]`` RGB; ``masks`` bool ``[K, H, W]`` visible parts only, each with
    at least ``MIN_VISIBLE_AREA`` pixels; ``labels`` int64 ``[K]`` in 1..4, ordered back to front;
    ``sources`` int64 ``[K]``: each instance's index in the list of shapes that was rendered.
    """

    image: npt.NDArray[np.uint8]
    masks: npt.NDArray[np.bool_]
    labels: npt.NDArray[np.int64]
    sources: npt.NDArray[np.int64]


def shape_vertices(shape: Shape) -> npt.NDArray[np.float64]:
    """Polygon vertices ``[N, 2]`` as ``(x, y)`` px of a square, triangle or star."""
    name = CLASS_NAMES[shape.label]
    if name == "square":
        theta = shape.angle + np.arange(4) * (np.pi / 2)
        radii = np.full(4, shape.radius)
    elif name == "triangle":
        theta = shape.angle + np.arange(3) * (2 * np.pi / 3) + np.asarray(shape.params[:3])
        radii = np.full(3, shape.radius)
    elif name == "star":
        theta = shape.angle + np.arange(10) * (np.pi / 5)
        radii = np.where(np.arange(10) % 2 == 0, shape.radius, shape.radius * shape.params[0])
    else:
        raise ValueError(
            f"shape_vertices needs a polygon class (square, triangle, star), got {name!r}"
        )
    cx, cy = shape.center
    return np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)


def rasterize(
    shape: Shape, height: int, width: int
) -> tuple[tuple[int, int], npt.NDArray[np.bool_]]:
    """Exact mask of ``shape`` clipped to an ``height x width`` image.

    Returns ``((y0, x0), window)`` where ``window`` is bool ``[h, w]`` covering rows ``y0:y0+h``
    and columns ``x0:x0+w``; the window is empty (``h == 0`` or ``w == 0``) when the shape lies
    outside the image.
    """
    cx, cy = shape.center
    r = shape.radius
    x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, width)
    y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return (max(y0, 0), max(x0, 0)), np.zeros((0, 0), dtype=bool)
    px = (np.arange(x0, x1) + 0.5)[None, :]
    py = (np.arange(y0, y1) + 0.5)[:, None]
    if CLASS_NAMES[shape.label] == "circle":
        return (y0, x0), (px - cx) ** 2 + (py - cy) ** 2 <= r * r
    return (y0, x0), _polygon_window(shape_vertices(shape), px, py)


def _polygon_window(
    vertices: npt.NDArray[np.float64], px: npt.NDArray[np.floating], py: npt.NDArray[np.floating]
) -> npt.NDArray[np.bool_]:
    """Even-odd point-in-polygon test of pixel centres ``px [1, w]`` x ``py [h, 1]``."""
    inside = np.zeros((py.shape[0], px.shape[1]), dtype=bool)
    nxt = np.roll(vertices, -1, axis=0)
    for (xa, ya), (xb, yb) in zip(vertices, nxt, strict=True):
        if ya == yb:
            continue
        crosses = (ya > py) != (yb > py)  # [h, 1]: edge spans this row
        x_at_row = xa + (py - ya) * (xb - xa) / (yb - ya)  # [h, 1]
        inside ^= crosses & (px < x_at_row)
    return inside


def make_background(rng: np.random.Generator, height: int, width: int) -> npt.NDArray[np.float32]:
    """A random background ``float32 [H, W, 3]`` in 0..255: gradient, noise or texture."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    if kind == "gradient":
        direction = rng.uniform(0, 2 * np.pi)
        t = (np.cos(direction) * xx + np.sin(direction) * yy) / max(height, width)
        other = rng.uniform(40, 215, size=3).astype(np.float32)
        img = base + (other - base) * (t - t.min())[..., None] / max(float(np.ptp(t)), 1e-6)
        return img
    if kind == "noise":
        sigma = rng.uniform(8, 30)
        return base + rng.normal(0, sigma, size=(height, width, 3)).astype(np.float32)
    # texture: a few oriented sinusoidal gratings with per-channel amplitude
    img = np.broadcast_to(base, (height, width, 3)).copy()
    for _ in range(int(rng.integers(2, 5))):
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(6, 80)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin((np.cos(theta) * xx + np.sin(theta) * yy) * (2 * np.pi / period) + phase)
        img += wave[..., None] * rng.uniform(-25, 25, size=3).astype(np.float32)
    return img


def distinct_color(
    rng: np.random.Generator, avoid: list[npt.NDArray[np.float64]]
) -> tuple[int, int, int]:
    """A random RGB colour at least 70 (Euclidean, 0..255 units) from every colour in ``avoid``.

    Gives up after 20 draws and returns the last one, so crowded palettes stay possible.
    """
    color = rng.uniform(0, 255, size=3)
    for _ in range(20):
        if all(np.linalg.norm(color - a) >= 70 for a in avoid):
            break
        color = rng.uniform(0, 255, size=3)
    return (int(color[0]), int(color[1]), int(color[2]))


def random_shape(rng: np.random.Generator, height: int, width: int) -> Shape:
    """A random shape (grey until coloured) centred anywhere in the image; it may stick out."""
    label = int(rng.integers(1, len(CLASS_NAMES)))
    size = float(np.exp(rng.uniform(np.log(MIN_SIZE), np.log(MAX_SIZE))))
    name = CLASS_NAMES[label]
    params: tuple[float, ...] = ()
    if name == "triangle":
        params = tuple(float(v) for v in rng.uniform(-0.35, 0.35, size=3))
    elif name == "star":
        params = (float(rng.uniform(0.38, 0.5)),)
    return Shape(
        label=label,
        center=(float(rng.uniform(0, width)), float(rng.uniform(0, height))),
        radius=size / 2,
        angle=float(rng.uniform(0, 2 * np.pi)),
        color=(128, 128, 128),
        params=params,
    )


def render(
    shapes: list[Shape],
    background: npt.NDArray[np.float32],
    noise: npt.NDArray[np.float32] | None = None,
) -> Scene:
    """Paint ``shapes`` back to front over ``background`` (``float32 [H, W, 3]``, 0..255 units).

    ``noise`` (same shape as ``background``) is added to the whole image after painting. Instances
    with fewer than ``MIN_VISIBLE_AREA`` visible pixels are dropped.
    """
    height, width = background.shape[:2]
    img = background.copy()
    owner = np.full((height, width), -1, dtype=np.int16)
    for i, shape in enumerate(shapes):
        (y0, x0), window = rasterize(shape, height, width)
        if window.size == 0:
            continue
        h, w = window.shape
        img[y0 : y0 + h, x0 : x0 + w][window] = shape.color
        owner[y0 : y0 + h, x0 : x0 + w][window] = i
    if noise is not None:
        img += noise
    masks, labels, sources = [], [], []
    for i, shape in enumerate(shapes):
        mask = owner == i
        if int(mask.sum()) >= MIN_VISIBLE_AREA:
            masks.append(mask)
            labels.append(shape.label)
            sources.append(i)
    stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    return Scene(
        image=np.clip(img, 0, 255).astype(np.uint8),
        masks=stacked,
        labels=np.asarray(labels, dtype=np.int64),
        sources=np.asarray(sources, dtype=np.int64),
    )


def at_border(rng: np.random.Generator, shape: Shape, height: int, width: int) -> Shape:
    """``shape`` moved onto a random edge of the image so that the edge cuts it.

    Its centre lies between ``0.8 * radius`` inside and ``0.7 * radius`` outside the edge, so
    anything from a sliver to most of the shape stays visible, like a shape entering or leaving.
    """
    edge = int(rng.integers(4))
    depth = float(rng.uniform(-0.8, 0.7)) * shape.radius  # > 0: centre outside the image
    cx, cy = shape.center
    if edge == 0:
        cy = -depth
    elif edge == 1:
        cy = height + depth
    elif edge == 2:
        cx = -depth
    else:
        cx = width + depth
    return replace(shape, center=(cx, cy))


def random_shapes(
    rng: np.random.Generator,
    height: int,
    width: int,
    background: npt.NDArray[np.float32],
    count: int,
    border_fraction: float = 0.0,
) -> list[Shape]:
    """``count`` random shapes whose colours avoid each other and the background under them.

    Each shape is moved onto an image edge (``at_border``) with probability ``border_fraction``;
    at 0 no extra random numbers are drawn, so existing seeds give the same scenes.
    """
    shapes: list[Shape] = []
    for _ in range(count):
        shape = random_shape(rng, height, width)
        if border_fraction > 0 and rng.random() < border_fraction:
            shape = at_border(rng, shape, height, width)
        cx = min(max(int(shape.center[0]), 0), width - 1)
        cy = min(max(int(shape.center[1]), 0), height - 1)
        r = max(int(shape.radius), 1)
        under = background[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1]
        avoid = [under.reshape(-1, 3).mean(0).astype(np.float64)]
        avoid += [np.asarray(s.color, dtype=np.float64) for s in shapes]
        shapes.append(replace(shape, color=distinct_color(rng, avoid)))
    return shapes


def generate_image(
    seed: int,
    height: int = 360,
    width: int = 640,
    max_shapes: int | None = None,
    border_fraction: float = 0.0,
) -> Scene:
    """One random scene, fully determined by ``seed`` (and ``border_fraction``).

    The number of shapes is uniform in ``[2, max_shapes]``; by default ``max_shapes`` scales with
    the image area (10 for 640x360). ``border_fraction`` of the shapes (on average) are cut by the
    image edge (see ``random_shapes``).
    """
    rng = np.random.default_rng(seed)
    if max_shapes is None:
        max_shapes = max(3, round(10 * height * width / (640 * 360)))
    background = make_background(rng, height, width)
    count = int(rng.integers(2, max_shapes + 1))
    shapes = random_shapes(rng, height, width, background, count, border_fraction)
    sigma = float(rng.uniform(0, 6))
    return render(
        shapes, background, rng.normal(0, sigma, size=background.shape).astype(np.float32)
    )
