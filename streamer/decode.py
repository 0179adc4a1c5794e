"""The one decode loop: packets of a PyAV video stream → ``(pts, uint8[H, W, 3] RGB)``.

Used by :mod:`streamer.media` (files, for ``streamer process`` and file sources of the daemon)
and by :mod:`streamer.sources` (live streams). It counts what it read in a :class:`DecodeStats`
so that callers can tell a file that ended early from one that ended, and it raises
:class:`StallError` when packets keep arriving but no frame decodes within ``stall_timeout_s``.

**RGB conversion.** One :class:`av.video.reformatter.VideoReformatter` per pass converts every
frame. PyAV's ``VideoFrame.to_ndarray(format=...)`` makes a new reformatter for each frame, and
with it a new swscale context whose slice threads are created and joined for that one frame: two
``clone3`` per 1080p frame on this 2-vCPU machine (``perf stat``). One context per pass keeps its
threads; same pixels, decode ceiling +9 % and pipeline +3 % frames/s (docs/performance.md §7).
The slice threads (:data:`SCALE_THREADS`) stay: measured again at stop 22, one thread per
conversion made the pipeline 8–11 % slower and spend 0.4–0.5 ms more process CPU per frame
(``streamer bench-pipeline``'s pipeline phase, 4 streams of 1080p, two runs each). PyAV 18
releases the GIL around ``sws_scale_frame`` but must take it back afterwards: with other Python
threads busy, a conversion that took 0.5–0.7 ms returns after 6–7 ms (a spinning thread beside it,
either thread count), so conversions are kept short.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import av.container
import av.video.stream
import numpy as np
import numpy.typing as npt
from av.video.reformatter import VideoReformatter

SCALE_THREADS = 0
"""swscale slice threads of the RGB conversion: ``0``, one per CPU (FFmpeg's choice), made once per
pass (measured faster than ``1`` in the daemon's pipeline: see the module docstring)."""


class StallError(Exception):
    """Packets arrive but no frame decodes within the stall timeout."""


@dataclass
class DecodeStats:
    """What one pass of :func:`decode_video` read."""

    packets: int = 0
    """Non-empty packets demuxed (the final flush packet is empty)."""
    frames: int = 0
    """Frames decoded."""
    corrupt: bool = False
    """A packet was flagged corrupt (e.g. the file ends inside it)."""
    last_time: float | None = None
    """Presentation time (s) of the last decoded frame."""


def decode_video(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 stats: DecodeStats | None = None, stall_timeout_s: float | None = None,
                 ) -> Iterator[tuple[float | None, npt.NDArray[np.uint8]]]:
    """Decode ``stream`` of ``container`` to its end: ``(pts seconds or None, RGB image)`` per frame.

    Raises ``av.FFmpegError`` from the demuxer or decoder, and :class:`StallError` when a
    non-empty packet decodes nothing and no frame came for ``stall_timeout_s`` seconds.
    """
    st = stats if stats is not None else DecodeStats()
    rgb = VideoReformatter()
    last_frame = time.monotonic()
    for packet in container.demux(stream):
        st.corrupt = st.corrupt or packet.is_corrupt
        st.packets += packet.size > 0
        frames = packet.decode()
        if not frames:
            if (stall_timeout_s is not None and packet.size
                    and time.monotonic() - last_frame > stall_timeout_s):
                raise StallError(f"no frame decoded for {stall_timeout_s:g} s")
            continue
        for vf in frames:
            st.frames += 1
            st.last_time = vf.time
            image = rgb.reformat(vf, format="rgb24", threads=SCALE_THREADS).to_ndarray()
            yield vf.time, np.ascontiguousarray(image, dtype=np.uint8)
        last_frame = time.monotonic()
