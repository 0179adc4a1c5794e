"""The MQTT sink against a real mosquitto broker on 127.0.0.1 (started per test on a free port)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamer.metrics import StreamerCollector
from streamer.schema import decode_rle
from streamer.sinks import MqttSinkConfig, create_sink
from streamer.sinks.mqtt import topic_for
from tests.streamer.daemon_process import free_port
from tests.streamer.mqtt_broker import Broker, Subscriber, needs_mosquitto
from tests.streamer.sink_helpers import sample, sample_message, wait_until, watched

pytestmark = needs_mosquitto

STATUS = "test/status"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    yield b
    b.stop()


def sink_config(port: int, **kw: Any) -> MqttSinkConfig:
    fields: dict[str, Any] = {"topic": "test/{stream}/frames", "status_topic": STATUS, **kw}
    return MqttSinkConfig(type="mqtt", host="127.0.0.1", port=port, **fields)


def test_topic_template_fills_the_stream_name() -> None:
    assert topic_for("maskrcnn/{stream}/frames", "cam1") == "maskrcnn/cam1/frames"
    assert topic_for("all/frames", "cam1") == "all/frames"
    assert topic_for("x/{stream}", "a/b+c#") == "x/a_b_c_"


def test_publishes_on_templated_topics_with_online_then_offline_status(broker: Broker) -> None:
    sub = Subscriber(broker.port, ["test/+/frames", STATUS])

    async def scenario() -> CollectorRegistry:
        registry = CollectorRegistry()
        sink = watched(create_sink(sink_config(broker.port, qos=1)), registry)
        await sink.start()
        assert sub.next_on(STATUS)[1] == "online"
        assert sample(registry, "streamer_sink_connected", sink=sink.name) == 1
        for i in range(3):
            sink.publish(sample_message("cam1", i))
            sink.publish(sample_message("cam2", i))
        got = [sub.next() for _ in range(6)]
        by_topic = {t: [json.loads(p)["frame"] for t2, p, _ in got if t2 == t] for t, _, _ in got}
        assert by_topic == {"test/cam1/frames": [0, 1, 2], "test/cam2/frames": [0, 1, 2]}
        first = json.loads(got[0][1])
        assert first == sample_message(first["stream"], first["frame"])
        mask = decode_rle(first["instances"][0]["mask"])
        assert mask.shape == (48, 64) and mask.any()
        await sink.close(timeout=2.0)
        assert sample(registry, "streamer_sink_messages_sent_total", sink=sink.name) == 6
        assert sample(registry, "streamer_sink_connected", sink=sink.name) == 0
        return registry

    registry = asyncio.run(scenario())
    assert sub.next_on(STATUS) == (STATUS, "offline", False)
    sub.close()
    assert sample(registry, "streamer_sink_errors_total", sink=sink_config(broker.port).label) == 0
    late = Subscriber(broker.port, [STATUS])  # the status is retained for late subscribers
    assert late.next_on(STATUS) == (STATUS, "offline", True)
    late.close()


async def receive_until(sub: Subscriber, frame: int) -> list[int]:
    """Frame indices received on ``test/cam1/frames`` up to and including ``frame``."""
    frames: list[int] = []
    while frame not in frames:
        _, payload, _ = await asyncio.to_thread(sub.next_on, "test/cam1/frames")
        frames.append(json.loads(payload)["frame"])
    return frames


def test_absent_broker_at_start_then_broker_restart_mid_run(tmp_path: Path) -> None:
    """Start with no broker: nothing raises, publish keeps the newest ``buffer`` messages. The broker
    appears → they arrive. It is killed → drops are counted. It comes back → later messages arrive."""
    port = free_port()

    async def scenario() -> None:
        registry = CollectorRegistry()
        sink = watched(create_sink(sink_config(port, buffer=4)), registry)
        name = sink.name
        await sink.start()
        for i in range(10):
            sink.publish(sample_message("cam1", i))
        assert sample(registry, "streamer_sink_messages_dropped_total", sink=name) == 6
        await asyncio.to_thread(wait_until, lambda: sample(registry, "streamer_sink_errors_total", sink=name) >= 1)
        assert sample(registry, "streamer_sink_connected", sink=name) == 0

        broker = Broker(tmp_path, port=port)
        sub = Subscriber(port, ["test/+/frames"])
        assert await asyncio.to_thread(
            wait_until, lambda: sample(registry, "streamer_sink_messages_sent_total", sink=name) == 4, 15.0)
        sink.publish(sample_message("cam1", 100))
        frames = await receive_until(sub, 100)
        # Buffered while the broker was away: the newest 4, in order (unless the subscriber
        # subscribed after the sink's reconnect: QoS 0 messages are not kept for it).
        assert frames[:-1] == [6, 7, 8, 9][5 - len(frames):], frames

        broker.kill()
        assert await asyncio.to_thread(
            wait_until, lambda: sample(registry, "streamer_sink_connected", sink=name) == 0)
        dropped_before = sample(registry, "streamer_sink_messages_dropped_total", sink=name)
        for i in range(200, 210):
            sink.publish(sample_message("cam1", i))
        assert sample(registry, "streamer_sink_messages_dropped_total", sink=name) >= dropped_before + 6

        broker.start()
        assert await asyncio.to_thread(
            wait_until, lambda: sample(registry, "streamer_sink_connected", sink=name) == 1, 15.0)
        assert await asyncio.to_thread(wait_until, lambda: sub.subscribed and sub.client.is_connected(), 15.0)
        sink.publish(sample_message("cam1", 300))
        frames = await receive_until(sub, 300)
        assert set(frames) <= {206, 207, 208, 209, 300}, frames  # only the newest survived the outage
        assert sample(registry, "streamer_sink_errors_total", sink=name) >= 2
        await sink.close(timeout=2.0)
        sub.close()
        broker.stop()

    asyncio.run(scenario())


def test_last_will_announces_offline_when_the_daemon_dies(broker: Broker) -> None:
    """SIGKILL a process running the sink: the broker publishes the retained ``offline`` will."""
    sub = Subscriber(broker.port, [STATUS])
    script = f"""
import asyncio, sys
from streamer.sinks import MqttSinkConfig, create_sink
async def main():
    cfg = MqttSinkConfig(type="mqtt", host="127.0.0.1", port={broker.port}, status_topic="{STATUS}", keepalive=5)
    sink = create_sink(cfg)
    await sink.start()
    await asyncio.sleep(60)
asyncio.run(main())
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert sub.next_on(STATUS, timeout=20.0)[1] == "online"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert sub.next_on(STATUS, timeout=10.0)[1] == "offline"
    finally:
        proc.kill()
        proc.wait()
        sub.close()


def test_username_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker(tmp_path, users={"streamer": "s3cret", "reader": "r3ad"})
    sub = Subscriber(broker.port, ["test/+/frames"], username="reader", password="r3ad")
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "s3cret")

    async def scenario() -> None:
        registry = CollectorRegistry()
        good = create_sink(sink_config(broker.port, username="streamer", password_env="TEST_MQTT_PASSWORD"))
        bad = create_sink(sink_config(broker.port, username="streamer", password="wrong", topic="bad/{stream}"))
        collector = StreamerCollector(registry)
        collector.watch_sink(good)
        collector.watch_sink(bad)
        await good.start()
        await bad.start()
        good.publish(sample_message("cam1", 1))
        bad.publish(sample_message("cam1", 2))
        assert json.loads(sub.next_on("test/cam1/frames")[1])["frame"] == 1
        assert await asyncio.to_thread(
            wait_until, lambda: sample(registry, "streamer_sink_errors_total", sink=bad.name) >= 1)
        assert sample(registry, "streamer_sink_connected", sink=bad.name) == 0
        assert sample(registry, "streamer_sink_connected", sink=good.name) == 1
        await good.close(timeout=2.0)
        await bad.close(timeout=0.5)
        assert sample(registry, "streamer_sink_messages_dropped_total", sink=bad.name) == 1

    try:
        asyncio.run(scenario())
    finally:
        sub.close()
        broker.stop()


def test_default_status_topic_is_per_host(broker: Broker) -> None:
    """Daemons on different hosts sharing a broker each get their own retained status (it was
    one ``maskrcnn/status`` for all, each daemon overwriting the others' ``online``)."""
    cfg = MqttSinkConfig(type="mqtt", host="127.0.0.1", port=broker.port)
    expected = f"maskrcnn/{socket.gethostname()}/status"
    assert cfg.status_topic == "maskrcnn/{host}/status" and cfg.resolved_status_topic == expected
    sub = Subscriber(broker.port, [expected])

    async def scenario() -> None:
        sink = create_sink(cfg)
        await sink.start()
        assert await asyncio.to_thread(sub.next_on, expected) == (expected, "online", False)
        await sink.close(timeout=2.0)

    asyncio.run(scenario())
    assert sub.next_on(expected) == (expected, "offline", False)
    sub.close()
