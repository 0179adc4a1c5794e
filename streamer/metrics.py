"""Prometheus metrics of the daemon, read at scrape time by one collector on a registry the caller owns.

Components keep plain state (:mod:`streamer.stats`: per-stream and per-sink counters, CPU per
stage; a decode thread's stream state; queue lengths); :class:`StreamerCollector` is told where
that state lives and turns it into metric families whenever the registry is collected (a
``/metrics`` scrape). Nothing pushes into Prometheus objects except the three histograms of
:class:`PipelineStats`, which record events rather than state::

    registry = CollectorRegistry()
    pipeline = PipelineStats()
    collector = StreamerCollector(registry, pipeline)
    collector.watch_stream("cam1", source_worker)     # .counts, .state
    collector.watch_sink(sink)                         # .name, .stats, .depth()
    collector.watch_queue("frames", batcher.pending)

Names follow the Prometheus rules: base units (seconds), ``_total`` counters, a ``streamer_``
prefix. ``docs/metrics.md`` lists every metric with its labels and example queries. Label values:
``stream`` is the configured source name (never a URL), ``sink`` is the sink's redacted label
(``SinkSettings.label``), ``queue`` names an internal queue. Library code never touches
prometheus_client's global default registry. A failing read never breaks a scrape: it is logged,
and the series it would have given are left out (a queue depth reads NaN).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from streamer.stats import (
    DROP_REASONS,
    INSTANCE_DROP_REASONS,
    STREAM_STATES,
    SinkCounts,
    SinkSnapshot,
    StageCpu,
    StreamCounts,
    StreamSnapshot,
    StreamState,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32)
INFERENCE_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)
END_TO_END_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class StreamView(Protocol):
    """What the collector reads of a running stream (a :class:`streamer.sources.SourceWorker`)."""

    @property
    def counts(self) -> StreamCounts: ...

    @property
    def state(self) -> StreamState | None: ...


class SinkView(Protocol):
    """What the collector reads of a sink (a :class:`streamer.sinks.base.BufferedSink`)."""

    @property
    def name(self) -> str: ...

    @property
    def stats(self) -> SinkCounts: ...

    def depth(self) -> int: ...


class PipelineStats:
    """What the pipeline's stages record beyond per-stream counts: CPU per stage and the histograms.

    The histograms stay client_python ``Histogram`` objects (not registered anywhere; the
    collector yields them): each observation is an event, and client_python already keeps the
    buckets, sum, count and ``_created`` series that a plain counter would have to reimplement.
    """

    def __init__(self) -> None:
        self.cpu = StageCpu()
        self.batch_size = Histogram(
            "streamer_inference_batch_size", "Frames per inference call.",
            buckets=BATCH_SIZE_BUCKETS, registry=None)
        self.inference_latency = Histogram(
            "streamer_inference_latency_seconds", "Wall time of one inference call (whole batch).",
            buckets=INFERENCE_LATENCY_BUCKETS, registry=None)
        self.end_to_end_latency = Histogram(
            "streamer_end_to_end_latency_seconds",
            "Frame capture (decode) to message published, per frame.",
            ["stream"], buckets=END_TO_END_LATENCY_BUCKETS, registry=None)


class StreamerCollector:
    """Every metric of ``streamer run``, read at scrape time; registers itself on ``registry``."""

    def __init__(self, registry: CollectorRegistry, pipeline: PipelineStats | None = None) -> None:
        self.pipeline = pipeline or PipelineStats()
        self._lock = threading.Lock()  # guards the tables below (the loop writes, scrapes read)
        self._streams: dict[str, StreamView] = {}
        self._sinks: dict[str, SinkView] = {}
        self._queues: dict[str, Callable[[], float]] = {}
        self._info: dict[str, str] = {}
        registry.register(self)

    # -- what to read --------------------------------------------------------------------------

    def set_info(self, version: str, backend: str, device: str, model: str) -> None:
        """Publish ``streamer_build_info{version,backend,device,model} 1``."""
        self._info = {"version": version, "backend": backend, "device": device, "model": model}

    def watch_stream(self, name: str, stream: StreamView) -> None:
        """Report stream ``name`` from ``stream`` (replacing the stream of that name, if any)."""
        with self._lock:
            self._streams[name] = stream

    def forget_stream(self, name: str) -> None:
        """Remove every series labelled ``name`` and its ``stream:<name>`` queue (a removed source)."""
        with self._lock:
            self._streams.pop(name, None)
            self._queues.pop(f"stream:{name}", None)
        self.pipeline.end_to_end_latency.remove_by_labels({"stream": name})

    def watch_sink(self, sink: SinkView) -> None:
        """Report ``sink``'s counters and its buffer as queue ``sink:<name>``."""
        with self._lock:
            self._sinks[sink.name] = sink
            self._queues[f"sink:{sink.name}"] = sink.depth

    def forget_sink(self, name: str) -> None:
        with self._lock:
            self._sinks.pop(name, None)
            self._queues.pop(f"sink:{name}", None)

    def watch_queue(self, queue: str, depth: Callable[[], float]) -> None:
        """Report ``streamer_queue_depth{queue}`` by calling ``depth()`` at each scrape."""
        with self._lock:
            self._queues[queue] = depth

    # -- the prometheus_client collector protocol -------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The families, without streams, sinks and queues (lets a registry refuse a second collector)."""
        yield from self._families(streams=[], sinks=[], queues=[], info={})

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            streams = list(self._streams.items())
            sinks = list(self._sinks.values())
            queues = list(self._queues.items())
        yield from self._families(streams, sinks, queues, self._info)

    def _families(self, streams: list[tuple[str, StreamView]], sinks: list[SinkView],
                  queues: list[tuple[str, Callable[[], float]]], info: dict[str, str]) -> Iterator[Metric]:
        s = _StreamFamilies()
        for name, stream in streams:
            read = _read(f"stream {name}", partial(_read_stream, stream))
            if read is not None:
                s.add(name, *read)
        p = self.pipeline
        cpu = CounterMetricFamily(
            "streamer_stage_cpu_seconds",
            "CPU time spent in each pipeline stage (decode, inference, postprocess, track, publish), "
            "summed over its threads.", labels=["stage"])
        for stage, seconds in p.cpu.snapshot().items():
            cpu.add_metric([stage], seconds, created=p.cpu.created)
        yield from (s.decoded, s.inferred, s.published, s.dropped, s.decode_errors, s.reconnects,
                    s.state, s.input_fps)
        yield from p.batch_size.collect()
        yield from p.inference_latency.collect()
        yield _queue_depths(queues)
        yield from p.end_to_end_latency.collect()
        yield from (s.instances, s.instances_dropped, cpu, s.tracks_active, s.tracks_started)
        yield from _sink_families(sinks)
        yield InfoMetricFamily("streamer_build", "Version and model of the running daemon.", value=info)


def _read(what: str, read: Callable[[], _T]) -> _T | None:
    """``read()``, or None (logged) if it raises: one broken component never breaks a scrape."""
    try:
        return read()
    except Exception:
        log.exception("metrics of %s could not be read; left out of this scrape", what)
        return None


def _read_stream(stream: StreamView) -> tuple[StreamSnapshot, StreamState | None]:
    return stream.counts.snapshot(), stream.state


def _read_sink(sink: SinkView) -> SinkSnapshot:
    return sink.stats.snapshot()


def _as_float(depth: Callable[[], float]) -> float:
    return float(depth())


class _StreamFamilies:
    """The per-stream families, filled stream by stream from one snapshot each."""

    def __init__(self) -> None:
        self.decoded = _counter("streamer_frames_decoded", "Frames decoded from the source.")
        self.inferred = _counter("streamer_frames_inferred", "Frames that went through the model.")
        self.published = _counter("streamer_frames_published", "Frame messages handed to the sinks.")
        self.dropped = _counter(
            "streamer_frames_dropped",
            "Frames dropped before publishing, by reason (queue_full, stale, shutdown, inference_error).",
            "reason")
        self.decode_errors = _counter("streamer_decode_errors", "Errors opening or decoding the source.")
        self.reconnects = _counter("streamer_reconnects", "Reconnection attempts of a live source.")
        self.state = GaugeMetricFamily(
            "streamer_stream_state",
            "1 for the stream's current state (connecting, up, backoff, ended, failed), 0 for the others.",
            labels=["stream", "state"])
        self.input_fps = GaugeMetricFamily(
            "streamer_stream_input_fps", "Decoded frames per second of the source (recent average).",
            labels=["stream"])
        self.instances = _counter(
            "streamer_instances", "Instances detected (after the score threshold), by class.", "class")
        self.instances_dropped = _counter(
            "streamer_instances_dropped",
            "Instances a runner returned that cannot be published, by reason (nonfinite: a NaN or "
            "infinite box or score; inverted: x2 < x1 or y2 < y1).", "reason")
        self.tracks_active = GaugeMetricFamily(
            "streamer_tracks_active",
            "Confirmed tracks alive in the stream (detected now, or lost for at most [tracking] max_age_s).",
            labels=["stream"])
        self.tracks_started = _counter(
            "streamer_tracks_started", "Tracks confirmed (given a new track id).")

    def add(self, name: str, c: StreamSnapshot, state: StreamState | None) -> None:
        created = c.created
        self.decoded.add_metric([name], c.decoded, created=created)
        self.inferred.add_metric([name], c.inferred, created=created)
        self.published.add_metric([name], c.published, created=created)
        for reason in DROP_REASONS:
            self.dropped.add_metric([name, reason], c.dropped[reason], created=created)
        self.decode_errors.add_metric([name], c.decode_errors, created=created)
        self.reconnects.add_metric([name], c.reconnects, created=created)
        current = state or "connecting"  # a stream whose decode thread has not reported yet
        for s in STREAM_STATES:
            self.state.add_metric([name, s], 1.0 if s == current else 0.0)
        if c.input_fps is not None:
            self.input_fps.add_metric([name], c.input_fps)
        for cls, (count, first_seen) in c.instances.items():
            self.instances.add_metric([name, cls], count, created=first_seen)
        for invalid in INSTANCE_DROP_REASONS:
            self.instances_dropped.add_metric([name, invalid], c.instances_dropped.get(invalid, 0), created=created)
        self.tracks_active.add_metric([name], c.tracks_active)
        self.tracks_started.add_metric([name], c.tracks_started, created=created)


def _counter(name: str, documentation: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=["stream", *labels])


def _queue_depths(queues: list[tuple[str, Callable[[], float]]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily("streamer_queue_depth", "Items waiting in an internal queue.", labels=["queue"])
    for queue, depth in queues:
        value = _read(f"queue {queue}", partial(_as_float, depth))
        family.add_metric([queue], math.nan if value is None else value)
    return family


def _sink_families(sinks: list[SinkView]) -> Iterator[Metric]:
    sent = CounterMetricFamily(
        "streamer_sink_messages_sent", "Messages a sink delivered to its transport.", labels=["sink"])
    dropped = CounterMetricFamily(
        "streamer_sink_messages_dropped",
        "Messages a sink discarded (buffer full, peer away at shutdown, lost on disconnect).", labels=["sink"])
    errors = CounterMetricFamily(
        "streamer_sink_errors", "Connection, write and encoding errors of a sink.", labels=["sink"])
    connected = GaugeMetricFamily(
        "streamer_sink_connected", "1 while the sink is connected (bound, file open), else 0.", labels=["sink"])
    for sink in sinks:
        snap = _read(f"sink {sink.name}", partial(_read_sink, sink))
        if snap is None:
            continue
        sent.add_metric([sink.name], snap.sent, created=snap.created)
        dropped.add_metric([sink.name], snap.dropped, created=snap.created)
        errors.add_metric([sink.name], snap.errors, created=snap.created)
        connected.add_metric([sink.name], 1.0 if snap.connected else 0.0)
    yield from (sent, dropped, errors, connected)
