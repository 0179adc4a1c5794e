"""Plain counters of the frame pipeline, kept by the components that count.

:class:`StreamCounts` holds one stream's numbers (decode thread, batcher, inference and publish
steps write them), :class:`SinkCounts` one sink's (its worker thread, the event loop and a
transport's network thread write them), :class:`StageCpu` the CPU time per pipeline stage. Nothing
here knows Prometheus: :class:`streamer.metrics.StreamerCollector` reads these objects at scrape
time, and the daemon's ``STATUS=`` line reads the same ones, so both always show the same numbers.

Every object guards its numbers with its own lock (writers run on several threads, the HTTP
server reads on another); ``snapshot()`` returns a consistent, immutable copy. ``created`` is the
Unix time the counters started (Prometheus' ``_created`` series).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

StreamState = Literal["connecting", "up", "backoff", "ended", "failed"]
STREAM_STATES: tuple[StreamState, ...] = get_args(StreamState)
DropReason = Literal["queue_full", "stale", "shutdown", "inference_error"]
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)
INSTANCE_DROP_REASONS = ("nonfinite", "inverted")
"""Why an instance a runner returned is not published (``engines.runner.Detections.invalid``)."""
PIPELINE_STAGES = ("decode", "inference", "postprocess", "track", "publish")
"""Stages of ``streamer_stage_cpu_seconds_total``, in pipeline order."""


@dataclass(frozen=True)
class StreamSnapshot:
    """One stream's counters at one moment (see :class:`StreamCounts`)."""

    created: float
    decoded: int
    inferred: int
    published: int
    dropped: Mapping[DropReason, int]
    """Every reason of :data:`DROP_REASONS`, 0 when none."""
    decode_errors: int
    reconnects: int
    input_fps: float | None
    """Decoded frames per second (recent average); None until first measured."""
    instances: Mapping[str, tuple[int, float]]
    """Class name → (instances published, Unix time the class was first seen)."""
    instances_dropped: Mapping[str, int]
    """Every reason of :data:`INSTANCE_DROP_REASONS`, 0 when none."""
    tracks_active: int
    tracks_started: int

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class StreamCounts:
    """The counters of one stream, from decoding to publishing.

    They belong to the stream's name, not to one decode thread: a source restarted by a config
    reload keeps counting in the same object; a removed source's object is dropped.
    """

    def __init__(self) -> None:
        self.created = time.time()
        self._lock = threading.Lock()
        self._decoded = self._inferred = self._published = 0
        self._dropped: dict[DropReason, int] = dict.fromkeys(DROP_REASONS, 0)
        self._decode_errors = self._reconnects = 0
        self._input_fps: float | None = None
        self._instances: dict[str, tuple[int, float]] = {}
        self._instances_dropped: dict[str, int] = dict.fromkeys(INSTANCE_DROP_REASONS, 0)
        self._tracks_active = self._tracks_started = 0

    # -- decoding (the stream's decode thread) -----------------------------------------------

    def count_decoded(self) -> None:
        with self._lock:
            self._decoded += 1

    def count_decode_error(self) -> None:
        with self._lock:
            self._decode_errors += 1

    def count_reconnect(self) -> None:
        with self._lock:
            self._reconnects += 1

    def set_input_fps(self, fps: float) -> None:
        with self._lock:
            self._input_fps = fps

    # -- batching, inference, publishing (the event loop) ------------------------------------

    def count_drop(self, reason: DropReason) -> None:
        """One frame dropped before publishing, for ``reason`` (one of :data:`DROP_REASONS`)."""
        if reason not in self._dropped:
            raise ValueError(f"drop reason must be one of {', '.join(DROP_REASONS)}, got {reason!r}")
        with self._lock:
            self._dropped[reason] += 1

    def count_inferred(self) -> None:
        with self._lock:
            self._inferred += 1

    def count_published(self, classes: Mapping[str, int], invalid: Mapping[str, int]) -> None:
        """One frame published with ``classes`` (class name → instances) and ``invalid``
        (reason → instances the runner returned that could not be published)."""
        now = time.time()
        with self._lock:
            self._published += 1
            for name, n in classes.items():
                count, created = self._instances.get(name, (0, now))
                self._instances[name] = (count + n, created)
            for reason, n in invalid.items():
                self._instances_dropped[reason] = self._instances_dropped.get(reason, 0) + n

    def set_tracks(self, active: int, started: int) -> None:
        """After a tracked frame: ``active`` confirmed tracks alive, ``started`` new ones."""
        with self._lock:
            self._tracks_active = active
            self._tracks_started += started

    def snapshot(self) -> StreamSnapshot:
        with self._lock:
            return StreamSnapshot(
                created=self.created, decoded=self._decoded, inferred=self._inferred,
                published=self._published, dropped=dict(self._dropped),
                decode_errors=self._decode_errors, reconnects=self._reconnects,
                input_fps=self._input_fps, instances=dict(self._instances),
                instances_dropped=dict(self._instances_dropped),
                tracks_active=self._tracks_active, tracks_started=self._tracks_started)


@dataclass(frozen=True)
class SinkSnapshot:
    """One sink's counters at one moment (see :class:`SinkCounts`)."""

    created: float
    sent: int
    dropped: int
    errors: int
    connected: bool


class SinkCounts:
    """What one sink did with the messages it was given: sent, dropped, errors; whether it is connected."""

    def __init__(self) -> None:
        self.created = time.time()
        self._lock = threading.Lock()
        self._sent = self._dropped = self._errors = 0
        self._connected = False

    def count_sent(self, n: int = 1) -> None:
        with self._lock:
            self._sent += n

    def count_dropped(self, n: int = 1) -> None:
        with self._lock:
            self._dropped += n

    def count_error(self) -> None:
        with self._lock:
            self._errors += 1

    def set_connected(self, connected: bool) -> None:
        with self._lock:
            self._connected = connected

    def snapshot(self) -> SinkSnapshot:
        with self._lock:
            return SinkSnapshot(self.created, self._sent, self._dropped, self._errors, self._connected)


class StageCpu:
    """CPU seconds spent in each pipeline stage (:data:`PIPELINE_STAGES`), summed over its threads."""

    def __init__(self) -> None:
        self.created = time.time()
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = dict.fromkeys(PIPELINE_STAGES, 0.0)

    def add(self, stage: str, seconds: float) -> None:
        if stage not in self._seconds:
            raise ValueError(f"stage must be one of {', '.join(PIPELINE_STAGES)}, got {stage!r}")
        with self._lock:
            self._seconds[stage] += seconds

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)
