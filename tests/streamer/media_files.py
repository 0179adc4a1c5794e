"""Media files encoded with PyAV (real containers, real codecs) and a fixed-output runner.

Helpers for the ``streamer process`` tests (test_media, test_annotate, test_process); the
fixtures that use them are in conftest.py.

Video frames are crops of ``skimage.data.astronaut()`` panning right and down by a few pixels
per frame, so every frame differs and decoded frames can be matched to their source index.
scikit-image is imported on the first frame asked for: a test that needs no frame runs without it,
and one that does is skipped, naming the package, where it is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import av
import av.video.stream
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from engines.runner import Detections, ModelInfo, Runner

WIDTH, HEIGHT, N_FRAMES, FPS = 96, 64, 8, 10
LONG_FRAMES = 30
"""Frames of the clips that the truncation fixtures cut."""



@cache
def _photo() -> npt.NDArray[np.uint8]:
    """scikit-image's astronaut photograph, ``uint8[512, 512, 3]``."""
    data = pytest.importorskip("skimage.data", reason="scikit-image (a test dependency: pip install '.[test]') "
                               "provides the photograph the fixture frames are cut from")
    photo: npt.NDArray[np.uint8] = data.astronaut()
    return photo


def source_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> npt.NDArray[np.uint8]:
    """Frame ``index`` of every fixture video: a ``[height, width, 3]`` crop panning 6 px right, 4 px down per frame."""
    y, x = 100 + 4 * index, 150 + 6 * index
    return np.ascontiguousarray(_photo()[y:y + height, x:x + width])


def encode_video(path: Path, codec: str, n_frames: int = N_FRAMES, width: int = WIDTH,
                 height: int = HEIGHT, pix_fmt: str = "yuv420p",
                 container_options: dict[str, str] | None = None,
                 codec_options: dict[str, str] | None = None) -> Path:
    """Encode ``source_frame(0..n_frames-1)`` at ``FPS`` into ``path`` with PyAV."""
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=FPS, options=codec_options or {})
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(source_frame(i, width, height), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (a download cut short)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


_FAST_H264 = {"preset": "ultrafast"}
_FASTSTART = {"movflags": "faststart"}  # index first: a cut file still opens and decodes its head


@dataclass(frozen=True)
class MediaCase:
    """One fixture file and what decoding it must give."""

    name: str
    kind: str  # "video" or "image"
    n_frames: int
    width: int = WIDTH
    height: int = HEIGHT


VIDEO_CASES = (
    MediaCase("h264.mp4", "video", N_FRAMES),
    MediaCase("hevc.mp4", "video", N_FRAMES),
    MediaCase("vp9.webm", "video", N_FRAMES),
    MediaCase("vp9.mkv", "video", N_FRAMES),
    MediaCase("mpeg4.mov", "video", N_FRAMES),
    MediaCase("mjpeg.avi", "video", N_FRAMES),
    MediaCase("anim.gif", "video", N_FRAMES),
)
IMAGE_CASES = (
    MediaCase("photo.png", "image", 1),
    MediaCase("photo.jpg", "image", 1),
)


def write_media_files(d: Path) -> Path:
    """Fill directory ``d`` with every ``VIDEO_CASES``/``IMAGE_CASES`` file plus broken and odd-sized files.

    Extra files: ``odd.avi`` (95x63 MJPEG, 8 frames), ``odd.png`` (95x63); ``long.mp4`` (H.264,
    index first), ``long.mkv`` (VP9) and ``long.avi`` (MJPEG) of ``LONG_FRAMES`` frames and their
    copies cut to 60 % of the bytes, ``truncated.mp4``/``.mkv``/``.avi``; ``short.mp4`` (3 frames)
    and ``cut.mp4`` (``long.mp4`` cut to 25 %: 1 to 3 frames decode); ``notes.txt`` (text),
    ``garbage.mp4`` (random bytes) and ``tone.wav`` (audio only). Returns ``d``.
    """
    vp9 = {"deadline": "realtime", "cpu-used": "8"}
    encode_video(d / "h264.mp4", "libx264", container_options=_FASTSTART, codec_options=_FAST_H264)
    encode_video(d / "hevc.mp4", "libx265", codec_options={"preset": "ultrafast",
                                                           "x265-params": "log-level=none"})
    encode_video(d / "vp9.webm", "libvpx-vp9", codec_options=vp9)
    encode_video(d / "vp9.mkv", "libvpx-vp9", codec_options=vp9)
    encode_video(d / "mpeg4.mov", "mpeg4")
    encode_video(d / "mjpeg.avi", "mjpeg", pix_fmt="yuvj420p")
    encode_video(d / "anim.gif", "gif", pix_fmt="rgb8")
    Image.fromarray(source_frame(0)).save(d / "photo.png")
    Image.fromarray(source_frame(0)).save(d / "photo.jpg", quality=95)
    encode_video(d / "odd.avi", "mjpeg", width=95, height=63, pix_fmt="yuvj444p")
    Image.fromarray(source_frame(0, 95, 63)).save(d / "odd.png")
    encode_video(d / "long.mp4", "libx264", LONG_FRAMES, container_options=_FASTSTART,
                 codec_options=_FAST_H264)
    encode_video(d / "long.mkv", "libvpx-vp9", LONG_FRAMES, codec_options=vp9)
    encode_video(d / "long.avi", "mjpeg", LONG_FRAMES, pix_fmt="yuvj420p")
    truncate(d / "long.mp4", d / "truncated.mp4", 0.6)
    truncate(d / "long.mkv", d / "truncated.mkv", 0.6)
    truncate(d / "long.avi", d / "truncated.avi", 0.6)
    # Few frames, for the end-to-end tests that run a real (slow on CPU) model.
    encode_video(d / "short.mp4", "libx264", 3, container_options=_FASTSTART, codec_options=_FAST_H264)
    truncate(d / "long.mp4", d / "cut.mp4", 0.25)
    (d / "notes.txt").write_text("these are notes, not a video\n" * 20)
    (d / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with av.open(str(d / "tone.wav"), mode="w") as container:
        audio = container.add_stream("pcm_s16le", rate=8000)
        samples = (np.sin(np.arange(8000) * 0.2) * 8000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in audio.encode(frame):
            container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)
    return d


class FixedRunner(Runner):
    """A runner with fixed output, to test the process layer without a model.

    Per frame of size ``(H, W)``: a "thing" (label 1, score 0.9) whose box is the middle half of
    the frame and whose mask fills the box, and a "faint" one (label 2, score 0.3) in the
    top-left quarter. ``batches`` records the size of each ``infer`` call.
    """

    CLASS_NAMES = ("__background__", "thing", "faint")

    def __init__(self) -> None:
        self.info = ModelInfo("fixed", "numpy", "cpu", self.CLASS_NAMES)
        self.batches: list[int] = []
        self.closed = False

    def infer(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        self.batches.append(len(frames))
        out = []
        for frame in frames:
            h, w = frame.shape[:2]
            boxes = np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4], [0, 0, w / 2, h / 2]], np.float32)
            out.append(Detections(boxes, np.array([0.9, 0.3], np.float32), np.array([1, 2], np.int64),
                                  np.ones((2, 28, 28), np.float32), (h, w)))
        return out

    def close(self) -> None:
        self.closed = True
