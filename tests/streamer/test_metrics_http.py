"""The metrics collector and the /metrics, /healthz, /readyz endpoint, scraped over real HTTP."""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from streamer.http import HealthState, HttpServer, start_http_server
from streamer.metrics import StreamerCollector
from streamer.sinks import create_sink, parse_sink_spec
from streamer.stats import StreamCounts, StreamState

EXPECTED = {  # family name → (type, label names)
    "streamer_frames_decoded": ("counter", {"stream"}),
    "streamer_frames_inferred": ("counter", {"stream"}),
    "streamer_frames_published": ("counter", {"stream"}),
    "streamer_frames_dropped": ("counter", {"stream", "reason"}),
    "streamer_decode_errors": ("counter", {"stream"}),
    "streamer_reconnects": ("counter", {"stream"}),
    "streamer_stream_state": ("gauge", {"stream", "state"}),
    "streamer_stream_input_fps": ("gauge", {"stream"}),
    "streamer_inference_batch_size": ("histogram", set()),
    "streamer_inference_latency_seconds": ("histogram", set()),
    "streamer_queue_depth": ("gauge", {"queue"}),
    "streamer_end_to_end_latency_seconds": ("histogram", {"stream"}),
    "streamer_instances": ("counter", {"stream", "class"}),
    "streamer_instances_dropped": ("counter", {"stream", "reason"}),
    "streamer_stage_cpu_seconds": ("counter", {"stage"}),
    "streamer_tracks_active": ("gauge", {"stream"}),
    "streamer_tracks_started": ("counter", {"stream"}),
    "streamer_sink_messages_sent": ("counter", {"sink"}),
    "streamer_sink_messages_dropped": ("counter", {"sink"}),
    "streamer_sink_errors": ("counter", {"sink"}),
    "streamer_sink_connected": ("gauge", {"sink"}),
    "streamer_build_info": ("gauge", {"version", "backend", "device", "model"}),  # an Info
}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(server: HttpServer) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` parsed: sample name → {sorted label items → value}."""
    status, body = get(f"{server.url}/metrics")
    assert status == 200
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


@dataclass
class FakeStream:
    """What the collector reads of a stream: its counters and its decode thread's state."""

    state: StreamState | None = None
    counts: StreamCounts = field(default_factory=StreamCounts)


def populate(metrics: StreamerCollector) -> FakeStream:
    cam1 = FakeStream("up")
    metrics.watch_stream("cam1", cam1)
    for _ in range(3):
        cam1.counts.count_decoded()
    for _ in range(2):
        cam1.counts.count_inferred()
    cam1.counts.count_published({"person": 4}, {})
    cam1.counts.count_published({}, {})
    cam1.counts.count_drop("stale")
    cam1.counts.count_reconnect()
    cam1.counts.set_input_fps(25.0)
    metrics.pipeline.batch_size.observe(2)
    metrics.pipeline.inference_latency.observe(0.042)
    metrics.watch_queue("batcher", lambda: 1)
    metrics.pipeline.end_to_end_latency.labels("cam1").observe(0.120)
    metrics.set_info(version="0.1.0", backend="pytorch", device="cpu", model="demo")
    return cam1


@pytest.fixture
def endpoint() -> Iterator[tuple[StreamerCollector, HealthState, HttpServer]]:
    registry = CollectorRegistry()
    metrics = StreamerCollector(registry)
    health = HealthState()
    server = start_http_server("127.0.0.1", 0, registry, health)
    yield metrics, health, server
    server.close()


def test_every_metric_is_exposed_with_its_type_and_labels(
        endpoint: tuple[StreamerCollector, HealthState, HttpServer]) -> None:
    metrics, _, server = endpoint
    populate(metrics)
    sink = create_sink(parse_sink_spec("jsonl:-"))
    metrics.watch_sink(sink)
    status, body = get(f"{server.url}/metrics")
    assert status == 200
    # The text format shows each counter's and histogram's creation time as a gauge family.
    families = {f.name: f for f in text_string_to_metric_families(body) if not f.name.endswith("_created")}
    assert set(families) == set(EXPECTED)
    for name, (kind, labels) in EXPECTED.items():
        family = families[name]
        assert family.type == kind, name
        assert family.documentation, f"{name} has no help text"
        series = family.samples
        assert series, f"{name} has no series"
        for s in series:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
            if kind == "counter":
                assert s.name == f"{name}_total"
    queue = families["streamer_queue_depth"].samples
    assert {s.labels["queue"] for s in queue} == {"batcher", f"sink:{sink.name}"}
    decoded = [s for s in families["streamer_frames_decoded"].samples if s.name.endswith("_total")]
    assert [(s.labels, s.value) for s in decoded] == [({"stream": "cam1"}, 3.0)]
    assert "streamer_frames_decoded" not in {m.name for m in REGISTRY.collect()}
    assert REGISTRY.get_sample_value("streamer_frames_decoded_total", {"stream": "cam1"}) is None


def test_openmetrics_on_request(endpoint: tuple[StreamerCollector, HealthState, HttpServer]) -> None:
    metrics, _, server = endpoint
    populate(metrics)
    request = urllib.request.Request(f"{server.url}/metrics",
                                     headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
        body = reply.read().decode()
    assert body.endswith("# EOF\n")
    assert 'streamer_frames_decoded_total{stream="cam1"} 3.0' in body


def test_counters_move_between_scrapes(endpoint: tuple[StreamerCollector, HealthState, HttpServer]) -> None:
    metrics, _, server = endpoint
    key = (("stream", "cam1"),)
    cam1 = populate(metrics)
    before = scrape(server)
    for _ in range(5):
        cam1.counts.count_decoded()
    metrics.pipeline.end_to_end_latency.labels("cam1").observe(0.3)
    after = scrape(server)
    assert after["streamer_frames_decoded_total"][key] - before["streamer_frames_decoded_total"][key] == 5
    assert after["streamer_end_to_end_latency_seconds_count"][key] == 2
    le_05 = tuple(sorted({"stream": "cam1", "le": "0.5"}.items()))
    assert after["streamer_end_to_end_latency_seconds_bucket"][le_05] == 2


def test_promtool_accepts_the_exposition(endpoint: tuple[StreamerCollector, HealthState, HttpServer]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("needs promtool (apt-get install prometheus)")
    metrics, _, server = endpoint
    populate(metrics)
    metrics.watch_sink(create_sink(parse_sink_spec("mqtt://user:pw@127.0.0.1:1/t")))
    _, body = get(f"{server.url}/metrics")
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check


def test_stream_state_is_one_hot_and_streams_can_be_removed(
        endpoint: tuple[StreamerCollector, HealthState, HttpServer]) -> None:
    metrics, _, server = endpoint
    populate(metrics)
    cam2 = FakeStream()
    metrics.watch_stream("cam2", cam2)
    metrics.watch_queue("stream:cam2", lambda: 0)

    def hot(stream: str) -> set[str]:
        states = scrape(server)["streamer_stream_state"]
        assert sum(v for k, v in states.items() if dict(k)["stream"] == stream) == 1
        return {dict(k)["state"] for k, v in states.items() if dict(k)["stream"] == stream and v == 1}

    assert hot("cam2") == {"connecting"}  # before its decode thread reports
    cam2.state = "backoff"
    assert hot("cam2") == {"backoff"}

    metrics.forget_stream("cam1")
    metrics.forget_stream("cam2")
    metrics.watch_stream("cam2", cam2)  # a restarted stream: same counters, series back
    text = get(f"{server.url}/metrics")[1]
    assert 'stream="cam1"' not in text
    assert 'stream="cam2"' in text


def test_sink_labels_never_carry_credentials(endpoint: tuple[StreamerCollector, HealthState, HttpServer]) -> None:
    metrics, _, server = endpoint
    sink = create_sink(parse_sink_spec("mqtt://alice:hunter2@127.0.0.1:1/site/{stream}"))
    metrics.watch_sink(sink)
    text = get(f"{server.url}/metrics")[1]
    assert f'streamer_sink_connected{{sink="{sink.name}"}} 0.0' in text
    assert "hunter2" not in text and "alice" not in text
    metrics.forget_sink(sink.name)
    assert sink.name not in get(f"{server.url}/metrics")[1]


def test_a_failing_queue_callback_does_not_break_the_scrape(
        endpoint: tuple[StreamerCollector, HealthState, HttpServer]) -> None:
    metrics, _, server = endpoint

    def broken() -> float:
        raise RuntimeError("queue went away")

    metrics.watch_queue("decoder", broken)
    metrics.watch_queue("batcher", lambda: 7)
    depths = scrape(server)["streamer_queue_depth"]
    assert math.isnan(depths[(("queue", "decoder"),)])
    assert depths[(("queue", "batcher"),)] == 7


class BrokenStream:
    state: StreamState | None = "up"

    @property
    def counts(self) -> StreamCounts:
        raise RuntimeError("counters went away")


def test_a_failing_component_is_logged_and_left_out_of_the_scrape(
        endpoint: tuple[StreamerCollector, HealthState, HttpServer], caplog: pytest.LogCaptureFixture) -> None:
    metrics, _, server = endpoint
    populate(metrics)
    metrics.watch_stream("broken", BrokenStream())
    with caplog.at_level(logging.ERROR, logger="streamer.metrics"):
        samples = scrape(server)
    assert samples["streamer_frames_decoded_total"] == {(("stream", "cam1"),): 3}
    assert any("stream broken" in r.getMessage() for r in caplog.records)


def test_the_collector_registers_once_per_registry() -> None:
    registry = CollectorRegistry()
    StreamerCollector(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        StreamerCollector(registry)


def test_healthz_follows_the_event_loop_heartbeat(
        endpoint: tuple[StreamerCollector, HealthState, HttpServer]) -> None:
    _, health, server = endpoint
    health.beat()
    assert get(f"{server.url}/healthz") == (200, "ok\n")
    health.loop_heartbeat = time.monotonic() - 6.0
    status, body = get(f"{server.url}/healthz")
    assert status == 503 and "heartbeat is 6." in body
    health.beat()
    assert get(f"{server.url}/healthz")[0] == 200


def test_readyz_needs_the_model_and_a_stream_up(endpoint: tuple[StreamerCollector, HealthState, HttpServer]) -> None:
    _, health, server = endpoint
    up = 0
    health.streams_up = lambda: up
    assert get(f"{server.url}/readyz") == (503, "model not loaded yet\n")
    health.model_loaded = True
    assert get(f"{server.url}/readyz") == (503, "no stream is up\n")
    up = 2
    assert get(f"{server.url}/readyz") == (200, "ok: 2 stream(s) up\n")

    def broken() -> int:
        raise RuntimeError("boom")

    health.streams_up = broken
    status, body = get(f"{server.url}/readyz")
    assert status == 503 and "boom" in body


def test_unknown_path_and_busy_port(endpoint: tuple[StreamerCollector, HealthState, HttpServer]) -> None:
    _, health, server = endpoint
    assert get(f"{server.url}/nope")[0] == 404
    assert server.host == "127.0.0.1" and server.port > 0
    with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{server.port}"):
        start_http_server("127.0.0.1", server.port, CollectorRegistry(), health)
    server.close()
    server.close()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.url}/healthz", timeout=2)
