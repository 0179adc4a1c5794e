"""The sink interface and the bounded, never-blocking buffer every sink is built on.

The daemon calls :meth:`Sink.publish` from its event loop; it must never wait on a slow or absent
consumer. Each sink therefore owns

- a bounded buffer (``buffer`` messages): ``publish`` appends and returns; when the buffer is full
  the OLDEST message is discarded and counted in ``streamer_sink_messages_dropped_total``;
- one worker thread that drains the buffer: serializes each message (:func:`streamer.frame_json.encode`)
  and hands it to the transport, (re)connecting with exponential backoff and jitter
  (:func:`streamer.backoff.backoff_delay`) while the peer is away, counting every error;
- ``close(timeout)``: the worker flushes what is buffered for at most ``timeout`` seconds, then the
  rest is counted as dropped and the transport is closed.

Subclasses implement the transport in three hooks that run on the worker thread only:
:meth:`BufferedSink._open`, :meth:`BufferedSink._send`, :meth:`BufferedSink._close_transport`
(and, where the transport holds bytes back, :meth:`BufferedSink._idle`, called whenever the buffer
runs dry: a burst is written in large pieces, and every message is out before the worker waits).
What a sink did is counted in its :attr:`Sink.stats` (:class:`streamer.stats.SinkCounts`), which
the metrics collector reads at scrape time.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from typing import Any

from streamer.backoff import backoff_delay
from streamer.encodings import MaskEncoding
from streamer.stats import SinkCounts

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_POLL_S = 0.05
"""How long the worker waits before offering a message again to a transport that refused it."""


class Sink(ABC):
    """A destination for frame messages. Safe to call from one event loop; never blocks it."""

    name: str
    """Label in logs and metrics, e.g. ``mqtt:127.0.0.1:1883/maskrcnn/{stream}/frames``; no secrets."""
    encoding: MaskEncoding
    """The mask encoding of the messages this sink wants (the daemon builds one message per encoding)."""
    stats: SinkCounts
    """Messages sent, dropped, errors, and whether connected."""

    @abstractmethod
    async def start(self) -> None:
        """Start connecting in the background; an unreachable peer is retried, never raised."""

    @abstractmethod
    def publish(self, msg: dict[str, Any]) -> None:
        """Queue one frame message. Returns at once and never raises; drops the oldest when full."""

    def publish_all(self, msgs: Sequence[dict[str, Any]]) -> None:
        """:meth:`publish` each of ``msgs`` in order (the daemon hands over a batch's messages
        at once; a buffered sink takes them in one step)."""
        for msg in msgs:
            self.publish(msg)

    @abstractmethod
    async def close(self, timeout: float) -> None:
        """Flush what is buffered for at most ``timeout`` seconds, then close the transport."""

    @abstractmethod
    def depth(self) -> int:
        """Messages waiting in the sink's buffer."""


class Delivery(enum.Enum):
    """What a transport did with one message (the result of :meth:`BufferedSink._send`)."""

    SENT = "sent"
    """Delivered to the transport; counted as sent now."""
    ACCEPTED = "accepted"
    """Taken by the transport, which counts it as sent (or dropped) itself later."""
    RETRY = "retry"
    """Not taken now (peer away or applying back-pressure); offer the same message again later."""


class Disconnected(Exception):
    """Raised by :meth:`BufferedSink._send` when the transport is broken and must be reopened."""


def stream_of(msg: dict[str, Any]) -> str:
    """The stream name of a frame message (``stream``, added by the daemon, else ``source``)."""
    return str(msg.get("stream") or msg.get("source") or "")


class BufferedSink(Sink):
    """A :class:`Sink` with a bounded drop-oldest buffer drained by one worker thread."""

    def __init__(self, name: str, encoding: MaskEncoding, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"sink buffer must hold at least 1 message, got {capacity}")
        self.name = name
        self.encoding = encoding
        self.capacity = capacity
        self.stats = SinkCounts()
        self._buffer: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._wake = threading.Event()  # set by transports when a refused message may now go
        self._stopping = False
        self._deadline = float("inf")  # time.monotonic() after which close() stops flushing
        self._thread: threading.Thread | None = None

    # -- the Sink interface -------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    def publish(self, msg: dict[str, Any]) -> None:
        self.publish_all((msg,))

    def publish_all(self, msgs: Sequence[dict[str, Any]]) -> None:
        """Buffer ``msgs`` under one lock and wake the worker once (not once per message)."""
        if not msgs:
            return
        try:
            with self._cond:
                if self._stopping:
                    self.stats.count_dropped(len(msgs))
                    return
                for msg in msgs:
                    if len(self._buffer) >= self.capacity:
                        self._buffer.popleft()
                        self.stats.count_dropped()
                    self._buffer.append(msg)
                self._cond.notify()
        except Exception:  # publishing must never raise into the daemon
            log.exception("sink %s: publish failed", self.name)

    async def close(self, timeout: float) -> None:
        with self._cond:
            self._stopping = True
            self._deadline = time.monotonic() + max(0.0, timeout)
            self._cond.notify_all()
        self._wake.set()
        thread = self._thread
        if thread is None:  # never started: nothing was sent, everything buffered is dropped
            self._drop_buffered()
            self._close_transport()
        else:
            await asyncio.to_thread(thread.join, max(0.0, timeout) + 1.0)
            if thread.is_alive():
                log.warning("sink %s: worker still busy %.1f s after close; abandoning it",
                            self.name, timeout + 1.0)
        self.stats.set_connected(False)

    def depth(self) -> int:
        """Messages waiting in the buffer."""
        return len(self._buffer)

    # -- transport hooks (worker thread only) -------------------------------------------------

    @abstractmethod
    def _open(self) -> None:
        """Connect/bind/open the transport. Raise on failure (counted, retried with backoff)."""

    @abstractmethod
    def _send(self, msg: dict[str, Any]) -> Delivery:
        """Hand one message to the transport. Raise :class:`Disconnected` if it broke, any other
        exception if this message cannot be sent (counted as an error, message discarded)."""

    @abstractmethod
    def _close_transport(self) -> None:
        """Release the transport (idempotent; may run after a failed or no ``_open``)."""

    def _idle(self) -> None:
        """The buffer ran dry: hand the transport's own buffered bytes on (a file's write buffer),
        so that what was accepted is delivered now rather than with the next burst. Raise
        :class:`Disconnected` if the transport broke. Default: nothing held back."""

    def _flushed(self) -> bool:
        """Whether the transport has delivered everything it accepted (checked by ``close``)."""
        return True

    def _set_connected(self, connected: bool) -> None:
        self.stats.set_connected(connected)

    # -- the worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        opened = False
        attempt = 0  # consecutive failures; reset by a delivered message
        while True:
            if not opened:
                if self._stopping:
                    break
                try:
                    self._open()
                    opened = True
                except Exception as err:
                    self.stats.count_error()
                    delay = backoff_delay(attempt, BACKOFF_INITIAL_S, BACKOFF_MAX_S)
                    log.warning("sink %s: cannot connect (%s); retrying in %.1f s", self.name, err, delay)
                    attempt += 1
                    self._sleep(delay)
                    continue
            try:
                if not self._buffer:  # about to wait: a burst's bytes go out before the next one
                    self._idle()
            except Disconnected as err:
                self._lost(err, attempt)
                opened, attempt = False, attempt + 1
                continue
            msg = self._take()
            if msg is None:  # stopping and the buffer is empty
                break
            try:
                result = self._send(msg)
            except Disconnected as err:
                self._requeue(msg)
                self._lost(err, attempt)
                opened, attempt = False, attempt + 1
                continue
            except Exception:
                self.stats.count_error()
                log.exception("sink %s: message could not be sent; discarded", self.name)
                continue
            if result is Delivery.RETRY:
                self._requeue(msg)
                if self._stopping and time.monotonic() >= self._deadline:
                    break
                self._wake.wait(RETRY_POLL_S)
                self._wake.clear()
                continue
            if result is Delivery.SENT:
                self.stats.count_sent()
            attempt = 0
        while opened and not self._flushed() and time.monotonic() < self._deadline:
            self._wake.wait(RETRY_POLL_S)
            self._wake.clear()
        self._drop_buffered()
        self._close_transport()
        self._set_connected(False)

    def _lost(self, err: Disconnected, attempt: int) -> None:
        """The transport broke (``attempt``: consecutive failures before): count it, release the
        transport, wait the backoff delay."""
        self.stats.count_error()
        delay = backoff_delay(attempt, BACKOFF_INITIAL_S, BACKOFF_MAX_S)
        log.warning("sink %s: connection lost (%s); reconnecting in %.1f s", self.name, err, delay)
        self._set_connected(False)
        self._close_transport()
        self._sleep(delay)

    def _take(self) -> dict[str, Any] | None:
        """The oldest buffered message; waits for one. None once stopping with an empty buffer."""
        with self._cond:
            while not self._buffer and not self._stopping:
                self._cond.wait()
            return self._buffer.popleft() if self._buffer else None

    def _requeue(self, msg: dict[str, Any]) -> None:
        """Put a message the transport refused back at the head of the buffer, so that the buffer
        bound holds for it too: if newer messages filled the buffer meanwhile, it is dropped."""
        with self._cond:
            if len(self._buffer) >= self.capacity:
                self.stats.count_dropped()
            else:
                self._buffer.appendleft(msg)

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if ``close`` is called."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping, timeout=seconds)

    def _drop_buffered(self) -> None:
        with self._cond:
            lost = len(self._buffer)
            self._buffer.clear()
        if lost:
            self.stats.count_dropped(lost)
            log.warning("sink %s: %d message(s) not delivered before close; dropped", self.name, lost)

