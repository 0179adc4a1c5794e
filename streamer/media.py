"""Decoded frames of media files: videos and still images, read with PyAV.

``open_media`` opens a file and returns a ``MediaReader``: its ``info`` (size, frame count,
frame rate) is known before the first frame, and iterating it yields
:class:`~streamer.frames.Frame` objects in presentation order (decoded by
:func:`streamer.decode.decode_video`, the decode loop live sources use too)::

    with open_media("clip.mp4") as reader:
        for frame in reader:                 # frame.index 0, frame.pts 0.0, frame.image uint8[H, W, 3]
            ...

Anything PyAV (FFmpeg) decodes works: mp4/mkv/webm/avi/mov/animated gif with H.264, H.265,
VP9, MPEG-4, MJPEG, ...; png/jpg/webp images are one-frame media with ``pts = None``.

Every failure is a ``MediaError(path, reason)``: at ``open_media`` for a missing, unreadable
or non-media file, and from the iteration for a file that ends early (after the frames
that do decode). Used by ``streamer process`` and by the daemon's file sources; live streams are opened in
:mod:`streamer.sources`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import av
import av.codec.hwaccel
import av.container
import av.video.stream

from streamer.decode import DecodeStats, decode_video
from streamer.frames import Frame

MediaKind = Literal["video", "image"]

IMAGE_FORMATS = frozenset({"image2", "image2pipe"})
"""FFmpeg demuxers of still images, besides the ``*_pipe`` ones (``png_pipe``, ``webp_pipe``, ...)."""

NON_MEDIA_FORMATS = frozenset({"tty"})
"""FFmpeg demuxers that turn non-media files into video (``tty`` renders text files as ANSI art):
such files are rejected as not media."""

DURATION_SLACK_FRAMES = 1.5
"""A video-only file whose last frame ends this many frame durations before the container's
declared duration is reported as truncated (used when the container declares no frame count)."""


class MediaError(Exception):
    """A media file cannot be opened or does not decode to its end.

    ``str(err)`` is ``"<path>: <reason>"``, fit for a one-line error message.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class MediaInfo:
    """What a media file declares before decoding. Counts and rates are the container's claims."""

    path: str
    """The path as given to ``open_media``."""
    kind: MediaKind
    """``"image"`` for single pictures (png, jpg, ...), ``"video"`` otherwise (animated gif included)."""
    width: int
    """Frame width in pixels (of the first frame, for the rare videos that change size)."""
    height: int
    """Frame height in pixels."""
    frame_count: int | None
    """Frames the container declares; None when unknown (mkv/webm usually). Always 1 for images."""
    fps: float | None
    """Average frame rate in frames per second; None for images or when unknown."""
    duration: float | None
    """Container duration in seconds; None when unknown."""
    codec: str
    """FFmpeg decoder name (``"h264"``, ``"vp9"``, ``"png"``, ...)."""

    @property
    def expected_frames(self) -> int | None:
        """The declared frame count, or ``round(duration * fps)`` when only those are known: a progress total."""
        if self.frame_count is not None:
            return self.frame_count
        if self.duration is not None and self.fps:
            return max(1, round(self.duration * self.fps))
        return None


class MediaReader:
    """An open media file; iterate it once for its ``Frame``s. Use as a context manager or ``close()``.

    Iteration raises ``MediaError`` with reason ``"truncated after frame N: ..."`` (or
    ``"no frame decodes: ..."``) once the decodable frames are exhausted, when FFmpeg reports
    an error, a packet is incomplete, the file holds fewer packets than the container declares
    frames, or (video-only files without a frame count) the last frame ends well before the
    declared duration.
    """

    def __init__(self, path: str | os.PathLike[str], container: av.container.InputContainer,
                 stream: av.video.stream.VideoStream, info: MediaInfo, name: str | None = None) -> None:
        self.path = str(path)
        self.name = self.path if name is None else name
        """The frames' ``stream`` and ``source`` (default: the path)."""
        self.info = info
        self._container = container
        self._stream = stream
        self._consumed = False

    def __enter__(self) -> MediaReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def codec_context(self) -> Any:
        """The video decoder's ``av.CodecContext`` (name, size, ``is_hwaccel``)."""
        return self._stream.codec_context

    def close(self) -> None:
        """Close the container. Idempotent."""
        self._container.close()

    def __iter__(self) -> Iterator[Frame]:
        if self._consumed:
            raise RuntimeError(f"{self.path}: a MediaReader iterates once; open the file again to re-read it")
        self._consumed = True
        still = self.info.kind == "image"
        stats = DecodeStats()
        try:
            for pts, image in decode_video(self._container, self._stream, stats):
                yield Frame(self.name, self.name, stats.frames - 1, None if still else pts,
                            time.time(), time.monotonic(), image)
        except av.FFmpegError as err:
            raise MediaError(self.path, _truncation(stats.frames, _ffmpeg_reason(err))) from err
        problem = self._shortfall(stats)
        if problem is not None:
            raise MediaError(self.path, _truncation(stats.frames, problem))

    def _shortfall(self, stats: DecodeStats) -> str | None:
        """Why a stream that ended without an FFmpeg error is still incomplete; None if it is not.

        Compares the container's claims with what was read: packets, not decoded frames, against
        the declared frame count, since decoders may legitimately drop a few frames (e.g. HEVC
        leading pictures of an open GOP).
        """
        info, count, packets, last_time = self.info, stats.frames, stats.packets, stats.last_time
        if stats.corrupt:
            return "the file ends inside a packet (incomplete data)"
        if info.frame_count is not None and packets < info.frame_count:
            return (f"the container declares {info.frame_count} frames but holds only {packets} "
                    f"({count} decode)")
        video_only = len(self._container.streams) == 1
        if (info.frame_count is None and video_only and info.duration is not None and info.fps
                and last_time is not None
                and last_time + DURATION_SLACK_FRAMES / info.fps < info.duration):
            return (f"the container declares {info.duration:.3f} s but the last frame is at "
                    f"{last_time:.3f} s")
        if count == 0:
            return "the video stream holds no frame"
        return None


def _truncation(decoded: int, reason: str) -> str:
    if decoded == 0:
        return f"no frame decodes: {reason}"
    return f"truncated after frame {decoded - 1}: {reason}"


def open_media(path: str | os.PathLike[str], *, name: str | None = None, input_format: str | None = None,
               options: dict[str, str] | None = None, hwaccel: str | None = None) -> MediaReader:
    """Open a video or image file for decoding (PyAV, frame-threaded decoding).

    ``name`` labels the frames (default: the path); ``input_format``, ``options`` and
    ``hwaccel`` (a hardware decoder device type, software fallback allowed) go to FFmpeg.
    Raises ``MediaError`` when the file is missing, unreadable, not a media file, or holds
    no video stream. The reason is FFmpeg's or the OS's message, without the path.
    """
    where = str(path)
    if Path(where).is_dir():
        raise MediaError(where, "is a directory, not a media file")
    accel = (av.codec.hwaccel.HWAccel(device_type=hwaccel, allow_software_fallback=True)
             if hwaccel else None)
    try:
        container = av.open(where, mode="r", format=input_format, options=options or {}, hwaccel=accel)
    except FileNotFoundError as err:
        raise MediaError(where, "no such file") from err
    except PermissionError as err:
        raise MediaError(where, "permission denied") from err
    except av.FFmpegError as err:
        raise MediaError(where, f"not a readable video or image ({_ffmpeg_reason(err)})") from err
    except OSError as err:
        raise MediaError(where, f"cannot read: {err.strerror or err}") from err
    if container.format.name in NON_MEDIA_FORMATS:
        fmt = container.format.name
        container.close()
        raise MediaError(where, f"not a readable video or image (FFmpeg reads it as {fmt!r} text)")
    if not container.streams.video:
        kinds: list[str] = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise MediaError(where, f"no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    info = _media_info(where, container, stream)
    return MediaReader(where, container, stream, info, name)


def _media_info(path: str, container: av.container.InputContainer,
                stream: av.video.stream.VideoStream) -> MediaInfo:
    fmt = container.format.name
    still = fmt in IMAGE_FORMATS or fmt.endswith("_pipe")
    duration = None if still or container.duration is None else container.duration / av.time_base
    rate = stream.average_rate
    fps = float(rate) if rate and not still else None
    if still:
        frame_count: int | None = 1
    else:
        frame_count = stream.frames if stream.frames > 0 else None
    return MediaInfo(path=path, kind="image" if still else "video",
                     width=stream.codec_context.width, height=stream.codec_context.height,
                     frame_count=frame_count, fps=fps, duration=duration,
                     codec=stream.codec_context.name)


def _ffmpeg_reason(err: av.FFmpegError) -> str:
    """FFmpeg's message without the trailing ``: '<filename>'`` PyAV appends."""
    return err.strerror or str(err)
