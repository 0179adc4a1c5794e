"""Decoded frames of live streams and files: one decode thread per source.

A :class:`SourceWorker` owns a thread named ``decode-<stream>`` that opens the URL with PyAV
(frame threading on, optional hardware decoding), decodes RGB frames with the one decode loop
(:func:`streamer.decode.decode_video`; files through :func:`streamer.media.open_media`, as
``streamer process`` reads them, so a truncated or non-media file fails the same way) and hands
each one to the asyncio loop through :class:`~streamer.batching.LoopHandoff` (into the stream's
bounded :class:`~streamer.batching.StreamQueue`). ``stop()`` sets a ``threading.Event``;
``join()`` waits for the thread.

Stream states, logged on each transition; :attr:`SourceWorker.state` is the current one (the
metrics collector reads it as ``streamer_stream_state``), :attr:`SourceWorker.counts` the stream's
counters (:class:`streamer.stats.StreamCounts`)::

    connecting ──► up ──► (error, EOF of a live stream, stall) ──► backoff ──► connecting ...
         │          └──► ended   (end of a non-looping file)
         └──► failed             (a file that does not decode; max_attempts reached)

Reconnection waits ``uniform(0, min(max_delay, initial_delay * 2**attempt))`` (exponential
backoff with full jitter, :func:`streamer.backoff.backoff_delay`); a connection that delivered frames for
``healthy_after_s`` resets ``attempt``. The stall watchdog: no packet for ``stall_timeout_s``
(PyAV's read timeout, plus :func:`guard_stalls`: FFmpeg answers the first read timeout with the
packet its parser held back, so without it a stall took twice the setting), or packets that yield
no frame for that long.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import av
import av.codec.hwaccel
import av.container
import numpy as np
import numpy.typing as npt

from streamer.backoff import backoff_delay
from streamer.batching import LoopHandoff
from streamer.config import SourceConfig
from streamer.decode import StallError, decode_video
from streamer.frames import Frame
from streamer.media import MediaError, MediaReader, open_media
from streamer.redact import redact_url
from streamer.stats import StageCpu, StreamCounts, StreamState

log = logging.getLogger("streamer.sources")

LIVE_ANALYZE_DURATION_US = 1_000_000
"""FFmpeg ``analyzeduration`` of live streams (µs) unless ``options`` sets one: FFmpeg's default
probing held every (re)connection of an RTSP camera for about 3 s, then released those frames in
a burst; 1 s still covers a keyframe interval of common cameras (the size comes from the SPS)."""
_T = TypeVar("_T")


class _StallGuard:
    """A container stand-in for :func:`~streamer.decode.decode_video` whose ``demux`` raises
    :class:`StallError` once a packet took ``stall_timeout_s`` or longer to arrive.

    FFmpeg's read timeout (the interrupt callback) returns ``AVERROR_EXIT`` on the *second* timeout
    of a frozen stream: on the first, ``av_read_frame`` flushes the H.264 parser and returns the
    access unit it held back. Timing each read here detects the stall at the first timeout.
    """

    def __init__(self, container: av.container.InputContainer, stall_timeout_s: float) -> None:
        self._container = container
        self._timeout = stall_timeout_s

    def demux(self, stream: Any) -> Iterator[Any]:
        packets = self._container.demux(stream)
        while True:
            asked = time.monotonic()
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.ExitError:  # the read timeout's interrupt
                raise StallError(_stall_reason(self._timeout)) from None
            if time.monotonic() - asked >= self._timeout:
                raise StallError(_stall_reason(self._timeout))
            yield packet


def _stall_reason(timeout: float) -> str:
    return f"stalled: no data for {timeout:g} s (stall_timeout_s)"


def lower_thread_priority(increment: int, stream: str) -> None:
    """Add ``increment`` to the calling thread's nice value (capped at 19).

    On Linux the nice value belongs to the thread and the threads it creates inherit it, so
    calling this first thing in a decode thread also lowers the frame threads FFmpeg starts
    when it opens the decoder. Raising one's own nice value needs no privilege. Why: the event
    loop and the postprocess threads hold the GIL in short bursts; on a saturated CPU the
    scheduler preempted them for FFmpeg's threads while they held it, and every Python stage
    waited (docs/performance.md §7 has the figures).
    """
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as err:  # e.g. a seccomp filter; decoding at the daemon's priority still works
        log.warning("stream %s: decode_nice %d not applied (%s)", stream, increment, err)


class SourceWorker:
    """The decode thread of one source. Thread-safe: ``state``, ``next_index``, ``stop()``.

    ``counts`` are the stream's counters (a source restarted by a reload gets its predecessor's,
    so they keep counting); ``cpu`` receives this thread's CPU time (stage ``decode``);
    ``on_state(stream, state)`` is called on the decode thread at each state transition.
    """

    def __init__(
        self,
        cfg: SourceConfig,
        handoff: LoopHandoff,
        *,
        counts: StreamCounts | None = None,
        cpu: StageCpu | None = None,
        start_index: int = 0,
        rng: random.Random | None = None,
        on_state: Callable[[str, StreamState], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.display_url = redact_url(cfg.url)
        self.handoff = handoff
        self.counts = counts or StreamCounts()
        self.cpu = cpu or StageCpu()
        self.next_index = start_index
        self.state: StreamState | None = None
        """None until the thread starts, then the current state."""
        self._on_state = on_state
        self.stop_event = handoff.stop
        self._rng = rng or random.Random()
        self._hwaccel = cfg.hwaccel
        """Hardware decoder device type; None once it proved unavailable."""
        self._reported_decoder = False
        self._fps_window: tuple[float, float | None, int] | None = None
        """(wall start, media start, frames) of the input-rate window; None until the first frame
        of a connection."""
        self._last_frame = 0.0
        self._cpu_mark = 0.0
        self.thread = threading.Thread(target=self._run, name=f"decode-{cfg.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Ask the thread to stop (returns at once; see :meth:`join`)."""
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True if it ended."""
        if self.thread.ident is not None:
            self.thread.join(timeout)
        return not self.thread.is_alive()

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        lower_thread_priority(self.cfg.decode_nice, self.name)
        self._cpu_mark = time.thread_time()
        attempt = 0
        try:
            while not self.stop_event.is_set():
                self._set_state("connecting")
                up_since: float | None = None
                try:
                    with self._open() as frames:
                        self._set_state("up")
                        up_since = self._last_frame = time.monotonic()
                        self._fps_window = None  # a reconnect's burst of buffered frames is no rate
                        finished = self._deliver_all(frames)
                    if self.stop_event.is_set() or (finished and self.cfg.kind == "file"):
                        break
                    reason = "end of stream"  # a live stream that ends is reconnected
                except (av.FFmpegError, OSError, StallError, ValueError, MediaError) as err:
                    if self.stop_event.is_set():
                        break
                    self.counts.count_decode_error()
                    reason = self._describe(err)
                    if self.cfg.kind == "file":
                        self._set_state("failed", reason)
                        return
                # Healthy = frames kept coming that long (a stall's silent wait does not count).
                if up_since is not None and self._last_frame - up_since >= self.cfg.reconnect.healthy_after_s:
                    attempt = 0
                attempt += 1
                limit = self.cfg.reconnect.max_attempts
                if limit is not None and attempt >= limit:
                    self._set_state("failed", f"{reason}; gave up after {attempt} attempts")
                    return
                delay = backoff_delay(attempt - 1, self.cfg.reconnect.initial_delay_s,
                                      self.cfg.reconnect.max_delay_s, self._rng)
                self._set_state("backoff", f"{reason}; retry {attempt} in {delay:.2f} s")
                self.counts.count_reconnect()
                if self.stop_event.wait(delay):
                    break
            if self.state != "failed":
                self._set_state("ended")
        except Exception as err:  # a bug or an unforeseen error: this stream fails, the others go on
            log.exception("stream %s: decode thread crashed", self.name)
            self._set_state("failed", self._describe(err))
        finally:
            self.handoff.end()

    @contextlib.contextmanager
    def _open(self) -> Iterator[Iterator[tuple[float | None, npt.NDArray[np.uint8]]]]:
        """Open the source (raising if it cannot be opened); yields its ``(pts, image)`` frames.

        A file is read through :func:`~streamer.media.open_media` (a looping file is opened again
        at its end); a live stream is opened here with PyAV's open and read timeouts.
        """
        if self.cfg.kind == "file":
            reader = self._with_hwaccel(self._open_file)
            try:
                yield self._file_frames(reader)
            finally:
                reader.close()
            return
        container = self._with_hwaccel(self._open_live)
        try:
            stream = container.streams.video[0]
            self._report_decoder(stream.codec_context)
            guarded = cast(av.container.InputContainer, _StallGuard(container, self.cfg.stall_timeout_s))
            yield decode_video(guarded, stream, stall_timeout_s=self.cfg.stall_timeout_s)
        finally:
            container.close()

    def _open_file(self, hwaccel: str | None) -> MediaReader:
        reader = open_media(self.cfg.resolved_url(), name=self.display_url, input_format=self.cfg.input_format,
                            options=dict(self.cfg.options), hwaccel=hwaccel)
        self._report_decoder(reader.codec_context)
        return reader

    def _file_frames(self, reader: MediaReader) -> Iterator[tuple[float | None, npt.NDArray[np.uint8]]]:
        while True:
            for frame in reader:
                yield frame.pts, frame.image
            if not self.cfg.loop or self.stop_event.is_set():
                return
            reader.close()
            reader = self._open_file(self._hwaccel)

    def _open_live(self, hwaccel: str | None) -> av.container.InputContainer:
        options = {"analyzeduration": str(LIVE_ANALYZE_DURATION_US), **self.cfg.options}
        if self.cfg.transport:
            options["rtsp_transport"] = self.cfg.transport
        accel = av.codec.hwaccel.HWAccel(device_type=hwaccel, allow_software_fallback=True) if hwaccel else None
        try:
            container = av.open(self.cfg.resolved_url(), options=options, format=self.cfg.input_format,
                                timeout=(self.cfg.open_timeout_s, self.cfg.stall_timeout_s), hwaccel=accel)
        except av.ExitError:  # the open timeout's interrupt
            raise TimeoutError(f"no answer within {self.cfg.open_timeout_s:g} s (open_timeout_s)") from None
        if not container.streams.video:
            container.close()
            raise ValueError("no video stream in the input")
        container.streams.video[0].thread_type = "AUTO"
        return container

    def _with_hwaccel(self, open_fn: Callable[[str | None], _T]) -> _T:
        """``open_fn(hwaccel)``; if the hardware decoder fails, once more with software decoding."""
        if not self._hwaccel:
            return open_fn(None)
        try:
            return open_fn(self._hwaccel)
        except (av.FFmpegError, MediaError) as err:
            opened = open_fn(None)  # raises again if the input, not the device, fails
            log.warning("stream %s: hwaccel %s unavailable (%s); software decoding",
                        self.name, self._hwaccel, self._describe(err))
            self._hwaccel, self._reported_decoder = None, True
            return opened

    def _report_decoder(self, ctx: Any) -> None:
        if not self._reported_decoder:
            how = f"hardware decoding ({self._hwaccel})" if ctx.is_hwaccel else "software decoding"
            log.info("stream %s: %s, codec %s, %dx%d", self.name, how, ctx.name, ctx.width, ctx.height)
            self._reported_decoder = True

    def _deliver_all(self, frames: Iterator[tuple[float | None, npt.NDArray[np.uint8]]]) -> bool:
        """Hand every frame to the loop until the end (True) or a stop request (False); errors raise.

        A ``realtime`` file is paced at its frame rate (from its timestamps).
        """
        pace_origin: tuple[float, float] | None = None  # (monotonic, media time) of the first frame
        pace = self.cfg.kind == "file" and self.cfg.realtime
        for media_t, image in frames:
            if pace and media_t is not None:
                if pace_origin is None or media_t < pace_origin[1]:  # first frame, or a loop restarted
                    pace_origin = (time.monotonic(), media_t)
                wait = pace_origin[0] + (media_t - pace_origin[1]) - time.monotonic()
                if wait > 0 and self.stop_event.wait(wait):
                    return False
            if not self._emit(media_t, image):
                return False
        return not self.stop_event.is_set()

    def _emit(self, pts: float | None, image: npt.NDArray[np.uint8]) -> bool:
        if self.stop_event.is_set():
            return False
        cpu = time.thread_time()  # this thread's CPU since the last frame: demux, decode, RGB
        self.cpu.add("decode", cpu - self._cpu_mark)
        self._cpu_mark = cpu
        self._last_frame = time.monotonic()
        frame = Frame(self.name, self.display_url, self.next_index, pts, time.time(), self._last_frame, image)
        self.counts.count_decoded()
        self._count_fps(pts)
        if not self.handoff.deliver(frame):
            return False
        self.next_index += 1
        return True

    def _count_fps(self, pts: float | None) -> None:
        """Update the input rate (``streamer_stream_input_fps``) about once a second: frames over the time they span.

        Live sources are measured in media time (their timestamps): right after a (re)connect
        FFmpeg hands over the packets it buffered while probing in a burst, which is not the
        camera's rate. Files, and streams without timestamps, are measured in wall time (a
        ``realtime = false`` file's rate is its decoding speed).
        """
        now = time.monotonic()
        media = pts if self.cfg.kind == "live" else None
        window = self._fps_window
        if window is None or (media is not None and (window[1] is None or media < window[1])):
            self._fps_window = (now, media, 0)  # first frame of a connection, or timestamps jumped back
            return
        start, media_start, count = window[0], window[1], window[2] + 1
        if now - start >= 1.0:
            span = media - media_start if media is not None and media_start is not None else now - start
            if span > 0:
                self.counts.set_input_fps(count / span)
            start, media_start, count = now, media, 0
        self._fps_window = (start, media_start, count)

    def _set_state(self, state: StreamState, detail: str = "") -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        if self._on_state is not None:
            self._on_state(self.name, state)
        level = logging.WARNING if state in ("backoff", "failed") else logging.INFO
        log.log(level, "stream %s: %s -> %s (%s)%s", self.name, previous or "new", state,
                self.display_url, f": {detail}" if detail else "")

    def _describe(self, err: BaseException) -> str:
        """The error text with the secret (resolved) URL replaced by the display URL."""
        text = str(err) or type(err).__name__
        return redact_url(text.replace(self.cfg.resolved_url(), self.display_url))
