"""Time segments of a video cut at keyframes, so that one long file spreads over many workers.

``streamer process --ray`` (:mod:`streamer.ray_process`) plans each input on a worker with
:func:`plan_segments` (a demux-only pass: packet timestamps and keyframe flags, no decoding), then
decodes each segment independently with :func:`decode_segment`::

    plan = plan_segments("clip.mp4", target_frames=3000)
    for seg in plan.segments:                 # on any worker, in any order
        for frame in decode_segment(seg):     # frame.index / frame.pts: those of the whole file
            ...

A segment starts at a keyframe and holds the frames whose presentation time lies in
``[start, end)``; its first frame index is the number of frames before ``start`` in the file, so
the frames of all segments, concatenated in segment order, are the frames a sequential decode
yields (same indices, timestamps and pixels: decoding starts at the keyframe). A segment that
decodes a different number of frames than the demux pass counted raises :class:`SegmentMismatch`;
the driver then processes the file whole.

Files are processed whole (one segment, decoded by :func:`streamer.media.open_media` exactly as
``streamer process`` does, truncation checks included) when they are images, short (fewer than
twice ``target_frames``), or anything the plan cannot vouch for: packets without timestamps, a
first packet that is not a keyframe, corrupt packets, fewer packets than the container declares.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av

from streamer.decode import decode_video
from streamer.frames import Frame
from streamer.media import MediaError, open_media

TIME_EPS = 1e-6
"""Seconds of slack when comparing a decoded frame's time with a segment bound (both are
``pts * time_base`` of the same stream, so they normally compare exactly)."""


class SegmentMismatch(MediaError):
    """A time segment decoded another number of frames than its plan counted (the file is then
    processed whole)."""


@dataclass(frozen=True)
class Segment:
    """Frames ``[first_frame, first_frame + frames)`` of ``path``: those with time in ``[start, end)``."""

    path: str
    number: int
    """Position of the segment within its input, from 0."""
    first_frame: int
    """Index (in the whole file) of the segment's first frame."""
    frames: int | None
    """Frames in the segment; None for a whole file of unknown length."""
    start: Fraction | None
    """Seconds of the keyframe the segment starts at; None: the start of the file (no seek)."""
    start_pts: int | None
    """``start`` in the stream's time base (the seek target)."""
    end: Fraction | None
    """Seconds where the next segment starts (exclusive); None: to the end of the file."""
    video: bool = True
    """The input is a video (tracked when tracking is on), not a still image."""
    file: str = ""
    """Where the worker opens it (the driver makes relative paths absolute); empty: ``path``."""

    @property
    def location(self) -> str:
        """The file to open."""
        return self.file or self.path

    @property
    def whole(self) -> bool:
        """The segment is the whole file (decoded with ``open_media``'s checks)."""
        return self.start is None and self.end is None


@dataclass(frozen=True)
class InputPlan:
    """How one input is split."""

    path: str
    segments: tuple[Segment, ...]
    expected_frames: int | None
    """Frames the input holds (the demux count for split files; the container's claim otherwise)."""


def whole_plan(path: str, expected_frames: int | None, video: bool = True, file: str = "") -> InputPlan:
    """The plan that processes ``path`` (opened at ``file``, default ``path``) as one segment."""
    return InputPlan(path, (Segment(path, 0, 0, expected_frames, None, None, None, video, file),),
                     expected_frames)


def plan_segments(path: str, target_frames: int | None, file: str = "") -> InputPlan:
    """Split ``path`` at keyframes into segments of at least ``target_frames`` frames (None: never split).

    ``path`` names the input in messages; ``file`` (default ``path``) is where it is read.
    Raises :class:`~streamer.media.MediaError` when the file cannot be opened (missing, not media).
    """
    where = file or path
    with open_media(where) as reader:
        info = reader.info
    expected = info.expected_frames
    if (target_frames is None or info.kind == "image"
            or (expected is not None and expected < 2 * target_frames)):
        return whole_plan(path, expected, info.kind == "video", file)
    packets = _packet_times(where)
    if packets is None or (info.frame_count is not None and len(packets[1]) < info.frame_count):
        return whole_plan(path, expected, True, file)
    time_base, rows = packets
    ordered = sorted(rows)  # presentation order: (pts, is_keyframe)
    cuts = [0]
    for i, (_pts, key) in enumerate(ordered):
        if key and i - cuts[-1] >= target_frames and len(ordered) - i >= target_frames // 2:
            cuts.append(i)
    segments = []
    for n, first in enumerate(cuts):
        stop = cuts[n + 1] if n + 1 < len(cuts) else len(ordered)
        start_pts = ordered[first][0]
        segments.append(Segment(
            path, n, first, stop - first,
            None if n == 0 else start_pts * time_base, None if n == 0 else start_pts,
            ordered[stop][0] * time_base if stop < len(ordered) else None, True, file))
    if len(segments) == 1:
        return whole_plan(path, expected, True, file)
    return InputPlan(path, tuple(segments), len(ordered))


def _packet_times(path: str) -> tuple[Fraction, list[tuple[int, bool]]] | None:
    """``(time_base, [(pts, is_keyframe), ...])`` of the video packets in decode order; None when
    the file cannot be split safely (a packet without pts, a corrupt packet, a first packet that
    is not a keyframe, no time base)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        if stream.time_base is None:
            return None
        rows: list[tuple[int, bool]] = []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts is None or packet.is_corrupt or (not rows and not packet.is_keyframe):
                return None
            rows.append((int(packet.pts), bool(packet.is_keyframe)))
        return Fraction(stream.time_base), rows


def decode_segment(seg: Segment) -> Iterator[Frame]:
    """The frames of ``seg`` in presentation order, indexed and timed as in the whole file.

    A whole-file segment is :func:`~streamer.media.open_media`'s iteration (its ``MediaError``
    on truncation included). A time segment raises :class:`SegmentMismatch` when it does not
    decode exactly ``seg.frames`` frames, or ``MediaError`` when FFmpeg fails.
    """
    if seg.start is None:
        with open_media(seg.location, name=seg.path) as reader:
            for frame in reader:
                if seg.frames is not None and not seg.whole and frame.index >= seg.frames:
                    return
                yield frame
        if not seg.whole and seg.frames is not None:
            raise SegmentMismatch(seg.path, f"first segment decoded fewer than {seg.frames} frames")
        return
    yield from _decode_from_keyframe(seg)


def _decode_from_keyframe(seg: Segment) -> Iterator[Frame]:
    assert seg.start is not None and seg.start_pts is not None and seg.frames is not None
    start = float(seg.start) - TIME_EPS
    end = float(seg.end) - TIME_EPS if seg.end is not None else float("inf")
    count = 0
    try:
        with av.open(seg.location) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            container.seek(seg.start_pts, stream=stream, backward=True, any_frame=False)
            for t, image in decode_video(container, stream):
                if t is None or t < start or t >= end:
                    continue  # leading pictures of the previous segment, or frames past the end
                yield Frame(seg.path, seg.path, seg.first_frame + count, t, time.time(), time.monotonic(),
                            image)
                count += 1
                if count == seg.frames:
                    return
    except av.FFmpegError as err:
        raise MediaError(seg.path, f"segment at {float(seg.start):.3f} s: {err.strerror or err}") from err
    except OSError as err:
        raise MediaError(seg.path, f"cannot read: {err.strerror or err}") from err
    raise SegmentMismatch(seg.path, f"segment at {float(seg.start):.3f} s decoded {count} of "
                                    f"{seg.frames} frames")
