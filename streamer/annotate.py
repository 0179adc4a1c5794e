"""Annotated frames (masks, boxes, labels drawn over the source) and their writers.

``draw_detections`` is pure: it blends each instance's mask in a per-class colour
(``alpha`` = 0.5), outlines its box and writes ``"<class> <score>"`` with Pillow's default
font; a tracked instance is coloured by its track id instead and labelled ``"#<id> <class>
<score>"``. The writers store a sequence of annotated frames:

- ``VideoWriter``: H.264 (libx264), yuv420p, in mp4/mkv/mov, one output frame per source
  frame at the source's average frame rate (25 fps for images or unknown rates). H.264 in
  yuv420p needs even sizes: an odd width or height gets one replicated edge column or row.
- ``PngWriter``: one PNG per frame in a directory, ``<stem>-<frame:06d>.png`` for videos and
  ``<stem>.png`` for images.

``AnnotateTarget`` parses the ``--annotate`` argument and names each input's output.
"""

from __future__ import annotations

import colorsys
import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.container
import av.video.stream
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from engines.masks import BoxMask
from engines.runner import Detections
from streamer.media import MediaInfo

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")
"""File suffixes ``--annotate`` accepts for an annotated video; anything else must be a directory."""

DEFAULT_FPS = 25.0
"""Frame rate of annotated videos whose source has none (images, unknown rates)."""

MASK_ALPHA = 0.5
"""Weight of the class colour in a blended mask pixel: ``out = (1 - a) * src + a * colour``."""


def class_color(label: int) -> tuple[int, int, int]:
    """A saturated RGB colour for class ``label``; labels close in value get distant hues (golden ratio)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def track_color(track_id: int) -> tuple[int, int, int]:
    """A colour for track ``track_id``: consecutive ids get distant hues, varied saturation/value."""
    hue = (track_id * 0.618033988749895 + 0.1) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, (0.95, 0.7, 0.85)[track_id % 3], (0.95, 1.0, 0.8)[track_id % 3])
    return round(r * 255), round(g * 255), round(b * 255)


def draw_detections(image: npt.NDArray[np.uint8], det: Detections,
                    masks: Sequence[BoxMask] | None, class_names: Sequence[str],
                    alpha: float = MASK_ALPHA,
                    track_ids: Sequence[int | None] | None = None) -> npt.NDArray[np.uint8]:
    """``image`` (``uint8[H, W, 3]`` RGB) with ``det`` drawn on it; a new array, the input is untouched.

    ``masks`` are the box-local masks aligned with ``det`` (:meth:`Detections.box_masks`; None:
    boxes and labels only); each is blended inside its box only. Instances are drawn from the
    lowest score up, so the most confident one is on top. Outside every mask, box outline and
    label, pixels equal the source. ``track_ids`` (one per detection, None: no id) colour
    and label each tracked instance by its track (untracked ones keep the class colour).
    """
    h, w = image.shape[:2]
    if masks is not None and len(masks) != len(det):
        raise ValueError(f"masks must hold one box mask per detection ({len(det)}), got {len(masks)}")
    if track_ids is not None and len(track_ids) != len(det):
        raise ValueError(f"track_ids must hold one id per detection ({len(det)}), got {len(track_ids)}")
    ids = list(track_ids) if track_ids is not None else [None] * len(det)
    colours = [class_color(int(det.labels[k])) if (tid := ids[k]) is None else track_color(tid)
               for k in range(len(det))]
    order = np.argsort(det.scores, kind="stable")
    out = image.astype(np.float32)
    if masks is not None:
        for k in order.tolist():
            tint = np.array(colours[k], dtype=np.float32)
            bm = masks[k]
            mh, mw = bm.mask.shape
            if bm.y0 + mh > h or bm.x0 + mw > w:
                raise ValueError(f"mask {k} ({mh}x{mw} at x={bm.x0}, y={bm.y0}) does not fit the "
                                 f"{w}x{h} image")
            region = out[bm.y0:bm.y0 + mh, bm.x0:bm.x0 + mw]
            region[bm.mask] = region[bm.mask] * (1.0 - alpha) + tint * alpha
    canvas = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, h // 40))
    line = max(1, min(h, w) // 240)
    for k in order.tolist():
        label = int(det.labels[k])
        colour = colours[k]
        x1, y1, x2, y2 = (float(v) for v in det.boxes[k])
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=line)
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = f"{name} {float(det.scores[k]):.2f}"
        if ids[k] is not None:
            text = f"#{ids[k]} {text}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1  # above the box, or inside when at the top edge
        draw.rectangle((x1, ty, x1 + tw + 2, ty + th + 2), fill=colour)
        draw.text((x1 + 1 - left, ty + 1 - top), text, fill=_text_colour(colour), font=font)
    return np.asarray(canvas, dtype=np.uint8)


class FrameWriter(ABC):
    """Stores annotated frames of one input, in order. ``close()`` finishes the file; idempotent."""

    @abstractmethod
    def write(self, image: npt.NDArray[np.uint8]) -> None:
        """Append one ``uint8[H, W, 3]`` RGB frame."""

    @abstractmethod
    def close(self) -> None:
        """Flush and close the output."""


class VideoWriter(FrameWriter):
    """H.264 yuv420p video at ``path``; the size comes from the first frame (odd sizes padded to even).

    Later frames of another size are scaled to the first one's. Frames are timed at a constant
    ``fps`` (``DEFAULT_FPS`` when None); variable-frame-rate sources are retimed.
    """

    def __init__(self, path: str | Path, fps: float | None) -> None:
        self.path = Path(path)
        self.rate = Fraction(fps if fps and fps > 0 else DEFAULT_FPS).limit_denominator(1001)
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._count = 0

    def write(self, image: npt.NDArray[np.uint8]) -> None:
        if self._container is None:
            self._open(image.shape[1], image.shape[0])
        assert self._container is not None and self._stream is not None
        frame = av.VideoFrame.from_ndarray(_pad_to_even(image), format="rgb24")
        if (frame.width, frame.height) != (self._stream.width, self._stream.height):
            frame = frame.reformat(width=self._stream.width, height=self._stream.height)
        frame.pts = self._count
        self._count += 1
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        if self._container is None or self._stream is None:
            return
        container, stream = self._container, self._stream
        self._container = self._stream = None
        try:
            for packet in stream.encode(None):
                container.mux(packet)
        finally:
            container.close()

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        options = {"movflags": "faststart"} if self.path.suffix.lower() in (".mp4", ".mov") else {}
        container = av.open(str(self.path), mode="w", options=options)
        codec = "libx264" if "libx264" in av.codecs_available else "h264"
        stream = container.add_stream(codec, rate=self.rate,
                                      options={"crf": "20", "preset": "veryfast"})
        if not isinstance(stream, av.video.stream.VideoStream):
            container.close()
            raise RuntimeError(f"PyAV's {codec!r} encoder is not a video encoder; "
                               "install a PyAV build with libx264")
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / self.rate
        self._container, self._stream = container, stream


class PngWriter(FrameWriter):
    """PNG files in ``directory``: ``<stem>.png`` for a still image, ``<stem>-<frame:06d>.png`` otherwise."""

    def __init__(self, directory: str | Path, stem: str, still: bool) -> None:
        self.directory = Path(directory)
        self.stem = stem
        self.still = still
        self._count = 0

    def write(self, image: npt.NDArray[np.uint8]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{self.stem}.png" if self.still else f"{self.stem}-{self._count:06d}.png"
        Image.fromarray(image).save(self.directory / name)
        self._count += 1

    def close(self) -> None:
        """Nothing to flush: each PNG is complete once ``write`` returns."""


@dataclass(frozen=True)
class AnnotateTarget:
    """Where ``--annotate`` puts annotated frames: one video file, or a directory of PNGs.

    With one input and a video path, the video is written there. With several inputs,
    ``OUT.mp4`` becomes ``OUT-<input stem>.mp4`` per input. A directory gets PNGs named after
    each input's stem. Input stems must therefore be distinct (``check_inputs``).
    """

    path: Path
    is_dir: bool

    @classmethod
    def parse(cls, value: str) -> AnnotateTarget:
        """``"out.mp4"`` (or .mkv/.mov) → a video target; ``"dir/"`` or an existing directory → PNGs.

        Raises ValueError for anything else.
        """
        path = Path(value)
        if value.endswith(("/", "\\")) or path.is_dir():
            return cls(path, is_dir=True)
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return cls(path, is_dir=False)
        raise ValueError(f"--annotate takes a video file ending in {', '.join(VIDEO_SUFFIXES)} or a "
                         f"directory ending in '/', got {value!r}")

    def check_inputs(self, inputs: Sequence[str]) -> None:
        """Raise ValueError when two inputs would write the same output, or an output would overwrite an input."""
        seen: dict[str, str] = {}
        for name in inputs:
            stem = Path(name).stem
            if stem in seen and seen[stem] != name and (self.is_dir or len(inputs) > 1):
                raise ValueError(f"--annotate: inputs {seen[stem]!r} and {name!r} have the same name "
                                 f"stem {stem!r}, so their annotated outputs would collide; "
                                 "rename one or process them separately")
            seen[stem] = name
            if self._would_overwrite(name, len(inputs)):
                raise ValueError(f"--annotate {self.path}: the annotated output of {name!r} would "
                                 "overwrite that input; choose another output path")

    def video_path(self, input_path: str, n_inputs: int) -> Path:
        """The annotated video of ``input_path``: the target itself, or ``OUT-<stem>.mp4`` for several inputs."""
        if n_inputs == 1:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{Path(input_path).stem}{self.path.suffix}")

    def writer_for(self, input_path: str, info: MediaInfo, n_inputs: int) -> FrameWriter:
        """The writer for one input's annotated frames (``n_inputs``: how many inputs share this target)."""
        if self.is_dir:
            return PngWriter(self.path, Path(input_path).stem, still=info.kind == "image")
        return VideoWriter(self.video_path(input_path, n_inputs), info.fps)

    def _would_overwrite(self, input_path: str, n_inputs: int) -> bool:
        source = Path(input_path).resolve()
        if not self.is_dir:
            return self.video_path(input_path, n_inputs).resolve() == source
        # An image's PNG is <dir>/<stem>.png: a .png input inside the directory itself.
        return (self.path / f"{Path(input_path).stem}.png").resolve() == source


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size`` px (the bitmap font where FreeType is missing), loaded once."""
    return ImageFont.load_default(size=size)


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (Rec. 601 luma threshold)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b >= 128 else (255, 255, 255)


def _pad_to_even(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """``image`` with its last row/column repeated where height/width is odd (yuv420p needs even sizes)."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
