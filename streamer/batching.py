"""Inference batches formed fairly across streams, from bounded per-stream queues.

Each stream has a :class:`StreamQueue` of at most ``queue_size`` frames, living on the event
loop. Live streams never wait: a full queue drops its OLDEST frame (reason ``queue_full``).
File streams never drop: the decode thread waits until the queue has room (a permit of the
queue's :attr:`StreamQueue.room`, taken before a frame is handed over and given back when a frame
leaves the queue). Decode threads hand frames over with :class:`LoopHandoff`, the one
thread→loop crossing, through the batcher's :class:`Inbox`, which wakes the loop only when the
batcher waits for that many frames (a wake costs the loop 20–45 µs of CPU here on asyncio's loop,
~10 µs on uvloop, more than taking a frame: docs/performance.md §7).

:class:`Batcher` takes frames round-robin — one frame per stream per round, starting after the
stream served last — so that no stream gets more than its share while others wait. A batch
holds frames of ONE size ``(H, W)`` (the size of its first frame; streams whose next frame has
another size keep their turn for the next batch), at most ``max_batch_size`` frames, and waits
at most ``max_wait_s`` for a partial batch to fill. A live frame older than ``staleness_s``
when it would be batched is dropped (reason ``stale``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from streamer.config import BatchingConfig
from streamer.frames import Frame
from streamer.stats import DropReason

DropCallback = Callable[[Frame, DropReason], None]
"""Called with each dropped frame and the reason (``queue_full``, ``stale``, ``shutdown``)."""


class StreamQueue:
    """Bounded FIFO of one stream's frames. Event-loop only, except :attr:`room`, which the
    decode thread takes from (through :class:`LoopHandoff`)."""

    def __init__(self, name: str, maxsize: int, drops: bool, on_drop: DropCallback, inbox: Inbox | None = None) -> None:
        self.name = name
        self.maxsize = maxsize
        self.drops = drops
        """True: ``offer`` drops the oldest frame when full (live); False: the decode thread waits for room (file)."""
        self.closed = False
        self.room: threading.Semaphore | None = None if drops else threading.Semaphore(maxsize)
        """File queues: one permit per free place. The decode thread takes one before it hands a
        frame over, so the queue never holds more than ``maxsize``; every frame leaving the queue
        gives its permit back, and closing gives out enough for any waiting decoder to go on."""
        self._frames: deque[Frame] = deque()
        self._on_drop = on_drop
        self._listeners: list[Callable[[], None]] = []
        self.inbox = inbox if inbox is not None else Inbox()
        """Where decode threads leave this queue's frames (:class:`LoopHandoff`): the batcher's
        shared one (:meth:`Batcher.new_queue`), else one of its own that wakes the loop per frame."""

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def finished(self) -> bool:
        """Closed and empty: no frame will ever come out again."""
        return self.closed and not self._frames

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever a frame arrives or the queue closes."""
        self._listeners.append(callback)

    def offer(self, frame: Frame) -> None:
        """Append without waiting. A full live queue drops its oldest frame (``queue_full``); a file
        queue is never full here (its decoder took a permit of :attr:`room` for this frame)."""
        if self.closed:
            self._on_drop(frame, "shutdown")
            return
        if self.room is None and len(self._frames) >= self.maxsize:
            self._on_drop(self._frames.popleft(), "queue_full")
        self._frames.append(frame)
        self._notify()

    def head(self) -> Frame | None:
        return self._frames[0] if self._frames else None

    def pop(self) -> Frame:
        frame = self._frames.popleft()
        if self.room is not None:
            self.room.release()
        return frame

    def close(self) -> None:
        """End of stream: later frames are dropped (``shutdown``); queued ones can still be taken."""
        self.closed = True
        if self.room is not None:
            self.room.release(self.maxsize + 1)  # a waiting decoder goes on; its frame is dropped
        self._notify()

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()


ROOM_POLL_S = 0.1
"""How often a decode thread waiting for room in a file queue checks its stop flag."""


class Inbox:
    """Frames on their way from decode threads to their queues on the event loop.

    A decode thread appends ``(queue, frame)`` (``frame`` None: the stream's end-of-stream
    sentinel) and wakes the loop (one ``call_soon_threadsafe``) only when the loop needs it: at
    an end of stream, when the ``want`` frames the batcher waits for have arrived, or when ``hold``
    frames wait while nobody waits (inference busy: live queues still drop their oldest frame
    soon, and no more than ``hold`` frames wait here). The loop takes everything at once
    (:meth:`deliver`), in arrival order, so a stream's frames and its sentinel keep their order.
    ``Inbox()`` wakes the loop for every frame.
    """

    def __init__(self, hold: int = 1) -> None:
        self.hold = max(1, hold)
        self._want = self.hold
        self._items: list[tuple[StreamQueue, Frame | None]] = []
        self._scheduled = False
        """A :meth:`deliver` is on its way to the loop: later arrivals ride with it."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, loop: asyncio.AbstractEventLoop, queue: StreamQueue, frame: Frame | None) -> None:
        """Any thread: leave ``frame`` for ``queue`` (None: the end of its stream). RuntimeError
        if ``loop`` is closed."""
        with self._lock:
            self._items.append((queue, frame))
            if self._scheduled or (frame is not None and len(self._items) < self._want):
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self.deliver)
        except RuntimeError:
            with self._lock:
                self._scheduled = False
            raise

    def deliver(self) -> None:
        """On the loop: offer every waiting frame to its queue and close the ended ones."""
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for queue, frame in items:
            if frame is None:
                queue.close()
            else:
                queue.offer(frame)

    def wake_per_frame(self) -> None:
        """On the loop: from now on every frame wakes it (draining: a late frame reaches its
        closed queue at once and is counted there as dropped, ``shutdown``, instead of waiting here)."""
        self.hold = 1
        self.want(None)

    def want(self, frames: int | None) -> None:
        """On the loop: wake it once ``frames`` frames wait (None: nobody waits; ``hold`` do)."""
        with self._lock:
            self._want = self.hold if frames is None else max(1, frames)
            due = len(self._items) >= self._want and not self._scheduled
            self._scheduled = self._scheduled or due
        if due:
            asyncio.get_running_loop().call_soon(self.deliver)


class LoopHandoff:
    """Hands frames from a decode thread to the stream's queue on the event loop.

    Live streams never wait (the queue drops its oldest frame when full); file streams wait for
    a permit of the queue's :attr:`~StreamQueue.room`, polling ``stop`` every
    :data:`ROOM_POLL_S` so that a stopped worker never hangs on a full queue. Either way the
    frame then goes into the queue's :class:`Inbox`, and the decode thread goes on decoding
    (no coroutine, task or future per frame; the loop is woken when the batcher needs frames).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: StreamQueue, stop: threading.Event) -> None:
        self.loop, self.queue, self.stop = loop, queue, stop

    def deliver(self, frame: Frame) -> bool:
        """Queue ``frame``; False if the worker was stopped (or the loop closed) meanwhile."""
        room = self.queue.room
        if room is not None:
            while not room.acquire(timeout=ROOM_POLL_S):
                if self.stop.is_set():
                    return False
        try:
            self.queue.inbox.put(self.loop, self.queue, frame)
        except RuntimeError:  # loop closed: the daemon is gone
            return False
        return not self.stop.is_set()

    def end(self) -> None:
        """End-of-stream sentinel: the queue closes once its frames are taken."""
        with contextlib.suppress(RuntimeError):
            self.queue.inbox.put(self.loop, self.queue, None)


def take_fair(
    queues: Sequence[StreamQueue],
    max_frames: int,
    size: tuple[int, int] | None,
    now: float,
    staleness_s: float,
    on_drop: DropCallback,
) -> tuple[list[Frame], int]:
    """Take up to ``max_frames`` frames of one size, one per queue per round, in ``queues`` order.

    ``size`` fixes the frame size (None: the size of the first frame taken). Stale heads of
    dropping (live) queues are dropped first. Returns the frames and the position in ``queues``
    of the last queue served (-1 if none), so the caller can start the next batch after it.
    """
    batch: list[Frame] = []
    last = -1
    progress = True
    while len(batch) < max_frames and progress:
        progress = False
        for pos, queue in enumerate(queues):
            if len(batch) >= max_frames:
                break
            head = queue.head()
            while head is not None and queue.drops and now - head.received > staleness_s:
                on_drop(queue.pop(), "stale")
                head = queue.head()
            if head is None or (size is not None and head.size != size):
                continue
            batch.append(queue.pop())
            size, last, progress = head.size, pos, True
    return batch, last


class Batcher:
    """Forms batches across the registered stream queues (see the module docstring)."""

    def __init__(self, cfg: BatchingConfig, on_drop: DropCallback) -> None:
        self.cfg = cfg
        self.queues: dict[str, StreamQueue] = {}
        self.closing = False
        """Set by :meth:`close`: ``next_batch`` returns None once every queue is empty."""
        self._on_drop = on_drop
        self.inbox = Inbox(hold=cfg.max_batch_size)
        """The frames of every queue on their way from the decode threads."""
        self._start = 0
        self._waiter: asyncio.Future[bool] | None = None
        """What ``next_batch`` awaits while it waits for a change (one future per wait, no task)."""

    def new_queue(self, name: str, drops: bool) -> StreamQueue:
        """Register (or replace) the queue of stream ``name``."""
        queue = StreamQueue(name, self.cfg.queue_size, drops, self._on_drop, self.inbox)
        queue.listen(self._on_change)
        self.queues[name] = queue
        self._on_change()
        return queue

    def remove_queue(self, name: str) -> None:
        """Unregister a stream; its queued frames are dropped (``shutdown``)."""
        queue = self.queues.pop(name, None)
        if queue is not None:
            self.inbox.deliver()
            queue.close()
            while len(queue):
                self._on_drop(queue.pop(), "shutdown")

    def pending(self) -> int:
        """Frames queued across all streams, and those on their way (:attr:`inbox`)."""
        return sum(len(q) for q in self.queues.values()) + len(self.inbox)

    def close(self) -> None:
        """Draining: close every queue; batches continue until the queued frames are taken."""
        self.closing = True
        self.inbox.deliver()  # decoded frames are queued, not dropped: draining publishes them
        self.inbox.wake_per_frame()  # a frame decoded from now on is counted as dropped at once
        for queue in self.queues.values():
            queue.close()
        self._on_change()

    async def next_batch(self) -> list[Frame] | None:
        """The next batch (1..max_batch_size frames of one size); None once closed and empty."""
        most = self.cfg.max_batch_size
        while True:
            self.inbox.deliver()
            batch = self._take(most, None)
            if batch:
                break
            if self.closing and all(q.finished for q in self.queues.values()):
                return None
            await self._wait_changed(None, 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.max_wait_s
        while len(batch) < most and not self.closing:
            remaining = deadline - loop.time()
            changed = remaining > 0 and await self._wait_changed(remaining, most - len(batch))
            self.inbox.deliver()  # also the frames that came too few to wake the loop
            batch += self._take(most - len(batch), batch[0].size)
            if not changed:
                break
        return batch

    def _take(self, max_frames: int, size: tuple[int, int] | None) -> list[Frame]:
        queues = list(self.queues.values())
        if not queues:
            return []
        start = self._start % len(queues)
        rotated = queues[start:] + queues[:start]
        batch, last = take_fair(rotated, max_frames, size, time.monotonic(),
                                self.cfg.staleness_s, self._on_drop)
        if last >= 0:
            self._start = start + last + 1
        return batch

    def _on_change(self) -> None:
        """A frame arrived or a queue closed (called for every frame: one test when nobody waits)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def _wait_changed(self, timeout: float | None, frames: int) -> bool:
        """Wait for the next queue change, waking for ``frames`` arrivals at the latest; False on
        timeout. (``next_batch`` looks at the queues and waits in one step of the loop, so no
        change can fall between the two.)"""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        expiry = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        self.inbox.want(frames)
        try:
            changed = await waiter
        finally:
            self.inbox.want(None)
            self._waiter = None
            if expiry is not None:
                expiry.cancel()
        return changed


def _expire(waiter: asyncio.Future[bool]) -> None:
    """A wait's timeout: the waiter, if still waiting, learns that nothing changed."""
    if not waiter.done():
        waiter.set_result(False)
