"""Prometheus metrics of the daemon, registered on a registry the caller owns.

Names follow the Prometheus rules: base units (seconds), ``_total`` counters, a ``streamer_``
prefix. ``docs/metrics.md`` lists every metric with its labels and example queries.

Label values: ``stream`` is the configured source name (never a URL), ``sink`` is the sink's
redacted label (:attr:`streamer.sinks.config.JsonlSinkConfig.label` etc.), ``queue`` names an
internal queue. Library code never touches prometheus_client's global default registry::

    registry = CollectorRegistry()
    metrics = StreamerMetrics(registry)
    metrics.frames_decoded.labels("cam1").inc()
    metrics.set_stream_state("cam1", "up")
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

log = logging.getLogger(__name__)

StreamState = Literal["connecting", "up", "backoff", "ended", "failed"]
STREAM_STATES: tuple[str, ...] = get_args(StreamState)
DropReason = Literal["queue_full", "stale", "shutdown", "inference_error"]
DROP_REASONS: tuple[str, ...] = get_args(DropReason)

INSTANCE_DROP_REASONS = ("nonfinite", "inverted")
"""Why an instance a runner returned is not published (``engines.runner.Detections.invalid``)."""
PIPELINE_STAGES = ("decode", "inference", "postprocess", "track", "publish")
"""Stages of ``streamer_stage_cpu_seconds_total``, in pipeline order."""

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32)
INFERENCE_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)
END_TO_END_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class StreamerMetrics:
    """Every metric of ``streamer run``; one instance per daemon, shared by all its parts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        # Per stream: decode → inference → publish.
        self.frames_decoded = Counter(
            "streamer_frames_decoded", "Frames decoded from the source.", ["stream"], registry=r)
        self.frames_inferred = Counter(
            "streamer_frames_inferred", "Frames that went through the model.", ["stream"], registry=r)
        self.frames_published = Counter(
            "streamer_frames_published", "Frame messages handed to the sinks.", ["stream"], registry=r)
        self.frames_dropped = Counter(
            "streamer_frames_dropped",
            "Frames dropped before publishing, by reason (queue_full, stale, shutdown, inference_error).",
            ["stream", "reason"], registry=r)
        self.decode_errors = Counter(
            "streamer_decode_errors", "Errors opening or decoding the source.", ["stream"], registry=r)
        self.reconnects = Counter(
            "streamer_reconnects", "Reconnection attempts of a live source.", ["stream"], registry=r)
        self.stream_state = Gauge(
            "streamer_stream_state",
            "1 for the stream's current state (connecting, up, backoff, ended, failed), 0 for the others.",
            ["stream", "state"], registry=r)
        self.input_fps = Gauge(
            "streamer_stream_input_fps", "Decoded frames per second of the source (recent average).",
            ["stream"], registry=r)
        # Inference.
        self.batch_size = Histogram(
            "streamer_inference_batch_size", "Frames per inference call.",
            buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.inference_latency = Histogram(
            "streamer_inference_latency_seconds", "Wall time of one inference call (whole batch).",
            buckets=INFERENCE_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "streamer_queue_depth", "Items waiting in an internal queue.", ["queue"], registry=r)
        self.end_to_end_latency = Histogram(
            "streamer_end_to_end_latency_seconds",
            "Frame capture (decode) to message published, per frame.",
            ["stream"], buckets=END_TO_END_LATENCY_BUCKETS, registry=r)
        self.instances = Counter(
            "streamer_instances", "Instances detected (after the score threshold), by class.",
            ["stream", "class"], registry=r)
        self.instances_dropped = Counter(
            "streamer_instances_dropped",
            "Instances a runner returned that cannot be published, by reason (nonfinite: a NaN or "
            "infinite box or score; inverted: x2 < x1 or y2 < y1).",
            ["stream", "reason"], registry=r)
        self.stage_cpu = Counter(
            "streamer_stage_cpu_seconds",
            "CPU time spent in each pipeline stage (decode, inference, postprocess, track, publish), "
            "summed over its threads.", ["stage"], registry=r)
        # Tracking (streamer.tracking_pipeline).
        self.tracks_active = Gauge(
            "streamer_tracks_active",
            "Confirmed tracks alive in the stream (detected now, or lost for at most [tracking] max_age_s).",
            ["stream"], registry=r)
        self.tracks_started = Counter(
            "streamer_tracks_started", "Tracks confirmed (given a new track id).", ["stream"], registry=r)
        # Sinks.
        self.sink_sent = Counter(
            "streamer_sink_messages_sent", "Messages a sink delivered to its transport.", ["sink"], registry=r)
        self.sink_dropped = Counter(
            "streamer_sink_messages_dropped",
            "Messages a sink discarded (buffer full, peer away at shutdown, lost on disconnect).",
            ["sink"], registry=r)
        self.sink_errors = Counter(
            "streamer_sink_errors", "Connection, write and encoding errors of a sink.", ["sink"], registry=r)
        self.sink_connected = Gauge(
            "streamer_sink_connected", "1 while the sink is connected (bound, file open), else 0.",
            ["sink"], registry=r)
        self.info = Info("streamer_build", "Version and model of the running daemon.", registry=r)
        for stage in PIPELINE_STAGES:
            self.stage_cpu.labels(stage)

    def set_info(self, version: str, backend: str, device: str, model: str) -> None:
        """Publish ``streamer_build_info{version,backend,device,model} 1``."""
        self.info.info({"version": version, "backend": backend, "device": device, "model": model})

    def set_stream_state(self, stream: str, state: str) -> None:
        """Set ``streamer_stream_state{stream,state}``: 1 for ``state``, 0 for every other state."""
        if state not in STREAM_STATES:
            raise ValueError(f"stream state must be one of {', '.join(STREAM_STATES)}, got {state!r}")
        for s in STREAM_STATES:
            self.stream_state.labels(stream, s).set(1.0 if s == state else 0.0)

    def init_stream(self, stream: str) -> None:
        """Create a stream's series at 0 so that ``rate()`` sees the first increment."""
        for counter in (self.frames_decoded, self.frames_inferred, self.frames_published,
                        self.decode_errors, self.reconnects, self.tracks_started):
            counter.labels(stream)
        self.tracks_active.labels(stream).set(0)
        for reason in DROP_REASONS:
            self.frames_dropped.labels(stream, reason)
        for reason in INSTANCE_DROP_REASONS:
            self.instances_dropped.labels(stream, reason)
        self.set_stream_state(stream, "connecting")

    def remove_stream(self, stream: str) -> None:
        """Remove every series labelled ``stream`` (a source removed by a config reload)."""
        for metric in (self.frames_decoded, self.frames_inferred, self.frames_published,
                       self.frames_dropped, self.decode_errors, self.reconnects, self.stream_state,
                       self.input_fps, self.end_to_end_latency, self.instances, self.instances_dropped,
                       self.tracks_active, self.tracks_started):
            metric.remove_by_labels({"stream": stream})

    def init_sink(self, sink: str) -> None:
        """Create a sink's series: counters at 0, ``streamer_sink_connected`` 0."""
        for counter in (self.sink_sent, self.sink_dropped, self.sink_errors):
            counter.labels(sink)
        self.sink_connected.labels(sink).set(0)

    def remove_sink(self, sink: str) -> None:
        """Remove every series of ``sink`` (a sink removed by a config reload)."""
        for metric in (self.sink_sent, self.sink_dropped, self.sink_errors, self.sink_connected):
            metric.remove_by_labels({"sink": sink})
        self.queue_depth.remove_by_labels({"queue": f"sink:{sink}"})

    def watch_queue(self, queue: str, depth: Callable[[], float]) -> None:
        """Report ``streamer_queue_depth{queue}`` by calling ``depth()`` at each scrape.

        A failing ``depth`` never breaks the scrape: the sample is NaN and the error is logged.
        """
        self.queue_depth.labels(queue).set_function(_never_raises(queue, depth))


def _never_raises(queue: str, depth: Callable[[], float]) -> Callable[[], float]:
    def sample() -> float:
        try:
            return float(depth())
        except Exception:
            log.exception("queue depth of %s could not be read; reporting NaN", queue)
            return math.nan

    return sample
