"""Decoded frames of live streams and files: one decode thread per source.

A :class:`SourceWorker` owns a thread named ``decode-<stream>`` that opens the URL with PyAV
(frame threading on, optional hardware decoding), decodes RGB frames and hands each one to the
asyncio loop through :class:`LoopHandoff` (``loop.call_soon_threadsafe`` into the stream's
bounded :class:`~streamer.batching.StreamQueue`). ``stop()`` sets a ``threading.Event``;
``join()`` waits for the thread.

Stream states, logged on each transition and exported as ``streamer_stream_state``::

    connecting ──► up ──► (error, EOF of a live stream, stall) ──► backoff ──► connecting ...
         │          └──► ended   (end of a non-looping file)
         └──► failed             (a file that does not decode; max_attempts reached)

Reconnection waits ``uniform(0, min(max_delay, initial_delay * 2**attempt))`` (exponential
backoff with full jitter, never a tight loop); a connection that delivered frames for
``healthy_after_s`` resets ``attempt``. The stall watchdog is PyAV's read timeout (no packet for
``stall_timeout_s``) plus a check that packets still yield frames within that time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import av
import av.codec.hwaccel
import av.container
import numpy as np
import numpy.typing as npt

from streamer.config import SourceConfig
from streamer.metrics import StreamerMetrics, StreamState
from streamer.redact import redact_url

if TYPE_CHECKING:
    from streamer.batching import StreamQueue

log = logging.getLogger("streamer.sources")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame on its way to inference."""

    stream: str
    """Configured stream name."""
    source: str
    """The source URL with credentials redacted (message key ``source``)."""
    index: int
    """Per-stream sequence number from 0, continuing across reconnects, loops and restarts."""
    pts: float | None
    """Presentation time in seconds of the source stream (None if the stream has none)."""
    capture_time: float
    """Unix time (s) when the frame was decoded: the start of end-to-end latency."""
    received: float
    """``time.monotonic()`` at decode, for the staleness budget."""
    image: npt.NDArray[np.uint8] = field(repr=False)
    """``uint8[H, W, 3]`` RGB."""

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.image.shape[0]), int(self.image.shape[1])


class StallError(Exception):
    """Packets arrive but no frame decodes within the stall timeout."""


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(max_s, initial_s * 2**attempt)]`` seconds."""
    return rng.uniform(0.0, min(max_s, initial_s * 2.0 ** min(attempt, 32)))


class LoopHandoff:
    """Hands frames from a decode thread to the stream's queue on the event loop.

    Live streams never wait (the queue drops its oldest frame when full); file streams wait
    for room (``run_coroutine_threadsafe(queue.put(...))``), polling ``stop`` so that a
    stopped worker never hangs on a full queue.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: StreamQueue, stop: threading.Event) -> None:
        self.loop, self.queue, self.stop = loop, queue, stop

    def deliver(self, frame: Frame) -> bool:
        """Queue ``frame``; False if the worker was stopped (or the loop closed) meanwhile."""
        try:
            if self.queue.drops:
                self.loop.call_soon_threadsafe(self.queue.offer, frame)
                return not self.stop.is_set()
            fut = asyncio.run_coroutine_threadsafe(self.queue.put(frame), self.loop)
        except RuntimeError:  # loop closed: the daemon is gone
            return False
        while True:
            try:
                fut.result(timeout=0.1)
                return True
            except concurrent.futures.TimeoutError:
                if self.stop.is_set():
                    fut.cancel()
                    return False
            except concurrent.futures.CancelledError:
                return False

    def end(self) -> None:
        """End-of-stream sentinel: the queue closes once its frames are taken."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.close)


class SourceWorker:
    """The decode thread of one source. Thread-safe: ``state``, ``next_index``, ``stop()``."""

    def __init__(
        self,
        cfg: SourceConfig,
        handoff: LoopHandoff,
        metrics: StreamerMetrics,
        start_index: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.display_url = redact_url(cfg.url)
        self.handoff = handoff
        self.metrics = metrics
        self.next_index = start_index
        self.state: StreamState | None = None
        self.stop_event = handoff.stop
        self._rng = rng or random.Random()
        self._hwaccel = cfg.hwaccel
        """Hardware decoder device type; None once it proved unavailable."""
        self._reported_decoder = False
        self._fps_window = (time.monotonic(), 0)
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
        attempt = 0
        try:
            while not self.stop_event.is_set():
                self._set_state("connecting")
                up_since: float | None = None
                try:
                    with self._open() as container:
                        self._set_state("up")
                        up_since = time.monotonic()
                        finished = self._decode(container)
                    if self.stop_event.is_set() or (finished and self.cfg.kind == "file"):
                        break
                    reason = "end of stream"  # a live stream that ends is reconnected
                except (av.FFmpegError, OSError, StallError, ValueError) as err:
                    if self.stop_event.is_set():
                        break
                    self.metrics.decode_errors.labels(stream=self.name).inc()
                    reason = self._describe(err)
                    if self.cfg.kind == "file":
                        self._set_state("failed", reason)
                        return
                if up_since is not None and time.monotonic() - up_since >= self.cfg.reconnect.healthy_after_s:
                    attempt = 0
                attempt += 1
                limit = self.cfg.reconnect.max_attempts
                if limit is not None and attempt >= limit:
                    self._set_state("failed", f"{reason}; gave up after {attempt} attempts")
                    return
                delay = backoff_delay(attempt - 1, self.cfg.reconnect.initial_delay_s,
                                      self.cfg.reconnect.max_delay_s, self._rng)
                self._set_state("backoff", f"{reason}; retry {attempt} in {delay:.2f} s")
                self.metrics.reconnects.labels(stream=self.name).inc()
                if self.stop_event.wait(delay):
                    break
            if self.state != "failed":
                self._set_state("ended")
        except Exception as err:  # a bug or an unforeseen error: this stream fails, the others go on
            log.exception("stream %s: decode thread crashed", self.name)
            self._set_state("failed", self._describe(err))
        finally:
            self.handoff.end()

    def _open(self) -> av.container.InputContainer:
        url = self.cfg.resolved_url()
        options = dict(self.cfg.options)
        if self.cfg.transport:
            options["rtsp_transport"] = self.cfg.transport
        kwargs: dict[str, Any] = {"options": options, "format": self.cfg.input_format}
        if self.cfg.kind == "live":
            kwargs["timeout"] = (self.cfg.open_timeout_s, self.cfg.stall_timeout_s)
        hwaccel = None
        if self._hwaccel:
            hwaccel = av.codec.hwaccel.HWAccel(device_type=self._hwaccel, allow_software_fallback=True)
        try:
            container = av.open(url, hwaccel=hwaccel, **kwargs)
        except av.FFmpegError as err:
            if hwaccel is None:
                raise
            container = av.open(url, **kwargs)  # raises again if the input, not the device, fails
            log.warning("stream %s: hwaccel %s unavailable (%s); software decoding",
                        self.name, self._hwaccel, self._describe(err))
            self._hwaccel, self._reported_decoder = None, True
        if not container.streams.video:
            container.close()
            raise ValueError("no video stream in the input")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if not self._reported_decoder:
            ctx = stream.codec_context
            how = f"hardware decoding ({self._hwaccel})" if ctx.is_hwaccel else "software decoding"
            log.info("stream %s: %s, codec %s, %dx%d", self.name, how, ctx.name, ctx.width, ctx.height)
            self._reported_decoder = True
        return container

    def _decode(self, container: av.container.InputContainer) -> bool:
        """Decode until the end (True), a stop request (False) or an error (raises).

        A looping file seeks back to its start at the end instead of returning.
        """
        while True:
            if not self._decode_pass(container):
                return False
            if not (self.cfg.loop and self.cfg.kind == "file"):
                return True
            container.seek(0)

    def _decode_pass(self, container: av.container.InputContainer) -> bool:
        stream = container.streams.video[0]
        stall = self.cfg.stall_timeout_s
        last_frame = time.monotonic()
        pace_origin: tuple[float, float] | None = None  # (monotonic, media time) of the first frame
        pace = self.cfg.kind == "file" and self.cfg.realtime
        for packet in container.demux(stream):
            if self.stop_event.is_set():
                return False
            frames = packet.decode()
            if not frames:
                if packet.size and time.monotonic() - last_frame > stall:
                    raise StallError(f"no frame decoded for {stall:g} s")
                continue
            for vf in frames:
                media_t = float(vf.time) if vf.time is not None else None
                if pace and media_t is not None:
                    if pace_origin is None:
                        pace_origin = (time.monotonic(), media_t)
                    wait = pace_origin[0] + (media_t - pace_origin[1]) - time.monotonic()
                    if wait > 0 and self.stop_event.wait(wait):
                        return False
                image = vf.to_ndarray(format="rgb24").astype(np.uint8, copy=False)
                if not self._emit(media_t, image):
                    return False
            last_frame = time.monotonic()
        return True

    def _emit(self, pts: float | None, image: npt.NDArray[np.uint8]) -> bool:
        if self.stop_event.is_set():
            return False
        frame = Frame(self.name, self.display_url, self.next_index, pts, time.time(), time.monotonic(), image)
        self.metrics.frames_decoded.labels(stream=self.name).inc()
        self._count_fps()
        if not self.handoff.deliver(frame):
            return False
        self.next_index += 1
        return True

    def _count_fps(self) -> None:
        start, count = self._fps_window
        now, count = time.monotonic(), count + 1
        if now - start >= 1.0:
            self.metrics.input_fps.labels(stream=self.name).set(count / (now - start))
            start, count = now, 0
        self._fps_window = (start, count)

    def _set_state(self, state: StreamState, detail: str = "") -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        if not self.stop_event.is_set():  # a stopped (maybe removed) stream keeps its series as they are
            self.metrics.set_stream_state(self.name, state)
        level = logging.WARNING if state in ("backoff", "failed") else logging.INFO
        log.log(level, "stream %s: %s -> %s (%s)%s", self.name, previous or "new", state,
                self.display_url, f": {detail}" if detail else "")

    def _describe(self, err: BaseException) -> str:
        """The error text with the secret (resolved) URL replaced by the display URL."""
        text = str(err) or type(err).__name__
        return redact_url(text.replace(self.cfg.resolved_url(), self.display_url))
