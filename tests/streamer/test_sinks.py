"""Sink configuration, the drop-oldest buffer and the JSONL sink (files and stdout, for real)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import TypeAdapter, ValidationError

from streamer.schema import decode_rle
from streamer.sinks import (
    JsonlSinkConfig,
    MqttSinkConfig,
    SinkConfig,
    SinkSettings,
    ZmqSinkConfig,
    create_sink,
    parse_sink_spec,
)
from streamer.sinks.jsonl import WRITE_BUFFER, JsonlSink, rotate
from streamer.sinks.registry import sink_types
from tests.streamer.sink_helpers import sample, sample_message, wait_until, watched

# -- configuration ------------------------------------------------------------------------------

def test_parse_sink_spec_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_sink_spec("jsonl:-") == JsonlSinkConfig(type="jsonl", path="-")
    assert parse_sink_spec("jsonl:/tmp/f.jsonl?max_bytes=1000").max_bytes == 1000  # type: ignore[union-attr]
    assert parse_sink_spec("zmq:tcp://127.0.0.1:5599") == ZmqSinkConfig(type="zmq", endpoint="tcp://127.0.0.1:5599")

    mqtt = parse_sink_spec("mqtt://bob:p%40ss@broker.lan:1884/site/{stream}/out?qos=1&mask_encoding=polygon")
    assert isinstance(mqtt, MqttSinkConfig)
    assert (mqtt.host, mqtt.port, mqtt.topic, mqtt.qos, mqtt.tls) == ("broker.lan", 1884, "site/{stream}/out", 1, False)
    assert (mqtt.username, mqtt.resolved_password(), mqtt.mask_encoding) == ("bob", "p@ss", "polygon")
    assert "p@ss" not in mqtt.label and "bob" not in mqtt.label and "p@ss" not in repr(mqtt)

    tls = parse_sink_spec("mqtts://broker.lan")
    assert isinstance(tls, MqttSinkConfig)
    assert (tls.port, tls.tls, tls.topic) == (8883, True, "maskrcnn/{stream}/frames")

    monkeypatch.setenv("TEST_MQTT_PASSWORD", "from-env")
    env = MqttSinkConfig(type="mqtt", host="h", username="u", password_env="TEST_MQTT_PASSWORD")
    assert env.resolved_password() == "from-env"


@pytest.mark.parametrize("spec, expected", [
    ("kafka:broker", "unknown sink type 'kafka'"),
    ("jsonl", "expected jsonl:PATH"),
    ("mqtt://", "no broker host"),
    ("mqtt://h/topic/#", "without '+', '#'"),
    ("mqtt://h?qos=3", "qos"),
    ("zmq:udp://1.2.3.4:5", "must start with tcp://"),
    ("jsonl:-?bogus=1", "bogus"),
])
def test_parse_sink_spec_rejects_with_reason(spec: str, expected: str) -> None:
    with pytest.raises(ValueError, match="bad sink spec") as err:
        parse_sink_spec(spec)
    assert expected in str(err.value)


def test_spec_errors_do_not_echo_passwords() -> None:
    with pytest.raises(ValueError) as err:
        parse_sink_spec("mqtt://bob:hunter2@broker:1883/t?qos=7")
    assert "hunter2" not in str(err.value)


def test_mqtt_config_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UNSET_VAR", raising=False)
    with pytest.raises(ValidationError, match="TEST_UNSET_VAR"):
        MqttSinkConfig(type="mqtt", host="h", username="u", password_env="TEST_UNSET_VAR")
    with pytest.raises(ValidationError, match="needs a username"):
        MqttSinkConfig.model_validate({"type": "mqtt", "host": "h", "password": "x"})
    with pytest.raises(ValidationError, match="tls = true"):
        MqttSinkConfig(type="mqtt", host="h", ca_file="/etc/ssl/ca.pem")
    with pytest.raises(ValidationError, match="extra"):
        MqttSinkConfig.model_validate({"type": "mqtt", "host": "h", "colour": "red"})


def test_sink_types_come_from_the_registry() -> None:
    """Each sink module registers its type; the config union and create_sink are built from them."""
    assert [t.name for t in sink_types()] == ["jsonl", "mqtt", "zmq"]
    assert [t.config for t in sink_types()] == [JsonlSinkConfig, MqttSinkConfig, ZmqSinkConfig]
    adapter: TypeAdapter[Any] = TypeAdapter(SinkConfig)
    assert isinstance(adapter.validate_python({"type": "zmq"}), ZmqSinkConfig)
    with pytest.raises(ValidationError, match="'jsonl', 'mqtt', 'zmq'"):
        adapter.validate_python({"type": "kafka"})
    with pytest.raises(TypeError, match="no sink for config type SinkSettings"):
        create_sink(SinkSettings())


# -- the bounded buffer -------------------------------------------------------------------------

def test_absent_consumer_never_blocks_and_drops_oldest(tmp_path: Path) -> None:
    """A JSONL sink whose directory does not exist yet (the config refuses that at load time;
    here the directory vanished after it, ``model_construct`` skips that check): publish returns
    at once, the buffer keeps the newest 4 (messages handed over one by one or as a batch alike),
    and once the directory appears the sink reconnects and writes exactly those."""

    async def scenario() -> None:
        registry = CollectorRegistry()
        path = tmp_path / "later" / "frames.jsonl"
        sink = watched(create_sink(JsonlSinkConfig.model_construct(type="jsonl", path=str(path), buffer=4)), registry)
        await sink.start()
        messages = [sample_message(index=i) for i in range(10)]
        start = time.perf_counter()
        sink.publish_all(messages[:6])  # more than the buffer holds, in one call
        for msg in messages[6:]:
            sink.publish(msg)
        assert time.perf_counter() - start < 0.05
        assert sample(registry, "streamer_sink_messages_dropped_total", sink=sink.name) == 6
        assert sample(registry, "streamer_queue_depth", queue=f"sink:{sink.name}") == 4
        assert wait_until(lambda: sample(registry, "streamer_sink_errors_total", sink=sink.name) >= 1)
        assert sample(registry, "streamer_sink_connected", sink=sink.name) == 0

        path.parent.mkdir()
        assert await asyncio.to_thread(
            wait_until, lambda: sample(registry, "streamer_sink_messages_sent_total", sink=sink.name) == 4)
        assert sample(registry, "streamer_sink_connected", sink=sink.name) == 1
        await sink.close(timeout=2.0)
        assert sample(registry, "streamer_sink_connected", sink=sink.name) == 0
        frames = [json.loads(line)["frame"] for line in path.read_text().splitlines()]
        assert frames == [6, 7, 8, 9]

    asyncio.run(scenario())


def test_close_counts_undeliverable_messages_and_refuses_new_ones(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        cfg = JsonlSinkConfig.model_construct(type="jsonl", path=str(tmp_path / "no" / "f"), buffer=8)
        sink = watched(create_sink(cfg), registry)
        await sink.start()
        for i in range(5):
            sink.publish(sample_message(index=i))
        start = time.perf_counter()
        await sink.close(timeout=0.2)
        assert time.perf_counter() - start < 1.5
        sink.publish(sample_message(index=5))
        sink.publish_all([sample_message(index=6), sample_message(index=7)])
        assert sample(registry, "streamer_sink_messages_dropped_total", sink=sink.name) == 8
        assert sample(registry, "streamer_sink_messages_sent_total", sink=sink.name) == 0

    asyncio.run(scenario())


def test_unserializable_message_is_an_error_not_a_crash(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        path = tmp_path / "f.jsonl"
        sink = watched(create_sink(JsonlSinkConfig(type="jsonl", path=str(path))), registry)
        await sink.start()
        bad = sample_message(index=0)
        bad["oops"] = {1, 2}  # a set is not JSON
        sink.publish(bad)
        sink.publish(sample_message(index=1))
        await sink.close(timeout=2.0)
        assert sample(registry, "streamer_sink_errors_total", sink=sink.name) == 1
        assert sample(registry, "streamer_sink_messages_sent_total", sink=sink.name) == 1
        assert [json.loads(line)["frame"] for line in path.read_text().splitlines()] == [1]

    asyncio.run(scenario())


# -- JSONL --------------------------------------------------------------------------------------

def test_jsonl_rotates_by_size_keeping_backups(tmp_path: Path) -> None:
    line_bytes = len(json.dumps(sample_message(index=10), separators=(",", ":"))) + 1
    path = tmp_path / "frames.jsonl"
    cfg = JsonlSinkConfig(type="jsonl", path=str(path), max_bytes=3 * line_bytes + 10, backups=2, buffer=64)

    async def scenario() -> CollectorRegistry:
        registry = CollectorRegistry()
        sink = watched(create_sink(cfg), registry)
        assert isinstance(sink, JsonlSink)
        await sink.start()
        for i in range(10, 30):  # 20 lines: 3 per file
            sink.publish(sample_message(index=i))
        await sink.close(timeout=5.0)
        return registry

    registry = asyncio.run(scenario())
    assert sample(registry, "streamer_sink_messages_sent_total", sink=cfg.label) == 20
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["frames.jsonl", "frames.jsonl.1", "frames.jsonl.2"]
    frames = {}
    for name in files:
        assert (tmp_path / name).stat().st_size <= cfg.max_bytes
        frames[name] = [json.loads(line)["frame"] for line in (tmp_path / name).read_text().splitlines()]
    # 20 lines in files of 3: the last 2 in the live file, the 6 before in the backups, newest first.
    assert frames == {"frames.jsonl": [28, 29], "frames.jsonl.1": [25, 26, 27], "frames.jsonl.2": [22, 23, 24]}
    last = json.loads((tmp_path / "frames.jsonl").read_text().splitlines()[-1])
    assert decode_rle(last["instances"][0]["mask"]).shape == (48, 64)


def _write_syscalls() -> int:
    """``write``-family system calls this process made so far (Linux ``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts write system calls through Linux /proc/self/io")
def test_jsonl_writes_a_burst_in_few_system_calls_and_flushes_when_idle(tmp_path: Path) -> None:
    """200 lines waiting when the worker starts go out in a few ``write`` calls (one per line
    before), and all of them are in the file once the buffer ran dry, before ``close``: the
    flush when idle is what makes them visible (without it they sit in the write buffer)."""
    path = tmp_path / "frames.jsonl"

    async def scenario() -> tuple[int, list[int]]:
        registry = CollectorRegistry()
        sink = watched(create_sink(JsonlSinkConfig(type="jsonl", path=str(path), buffer=256)), registry)
        for i in range(200):  # buffered before the worker exists: one burst
            sink.publish(sample_message(index=i))
        before = _write_syscalls()
        await sink.start()
        assert await asyncio.to_thread(
            wait_until, lambda: sample(registry, "streamer_sink_messages_sent_total", sink=sink.name) == 200)
        assert await asyncio.to_thread(wait_until, lambda: path.stat().st_size > 0 and path.read_bytes().count(b"\n") == 200)
        writes = _write_syscalls() - before
        frames = [json.loads(line)["frame"] for line in path.read_text().splitlines()]
        await sink.close(timeout=2.0)
        return writes, frames

    writes, frames = asyncio.run(scenario())
    assert frames == list(range(200))
    line_bytes = len(json.dumps(sample_message(index=100), separators=(",", ":"))) + 1
    assert writes <= 200 * line_bytes // WRITE_BUFFER + 20, f"{writes} write calls for 200 lines of {line_bytes} B"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="a full disk is simulated with Linux /dev/full")
def test_jsonl_lines_a_full_disk_refused_count_as_dropped_not_sent() -> None:
    """Writing to ``/dev/full`` fails with ENOSPC: every line counts as dropped (none as sent), the
    failure as an error, and the sink keeps reopening the file instead of dying."""

    async def scenario() -> CollectorRegistry:
        registry = CollectorRegistry()
        sink = watched(create_sink(JsonlSinkConfig(type="jsonl", path="/dev/full", buffer=16)), registry)
        await sink.start()
        for i in range(5):
            sink.publish(sample_message(index=i))
        assert await asyncio.to_thread(
            wait_until, lambda: sample(registry, "streamer_sink_messages_dropped_total", sink=sink.name) == 5)
        await sink.close(timeout=1.0)
        return registry

    registry = asyncio.run(scenario())
    assert sample(registry, "streamer_sink_messages_sent_total", sink="jsonl:/dev/full") == 0
    assert sample(registry, "streamer_sink_errors_total", sink="jsonl:/dev/full") >= 1


def test_rotate_without_backups_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text("old\n")
    rotate(str(path), 0)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_each_sink_declares_its_mask_encoding() -> None:
    specs = {"jsonl:-": "rle", "zmq:tcp://127.0.0.1:1?mask_encoding=polygon": "polygon",
             "mqtt://h/t?mask_encoding=none": "none"}
    for spec, encoding in specs.items():
        assert create_sink(parse_sink_spec(spec)).encoding == encoding


def test_jsonl_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> str:
        registry = CollectorRegistry()
        sink = watched(create_sink(parse_sink_spec("jsonl:-")), registry)
        assert sink.name == "jsonl:stdout"
        await sink.start()
        for i in range(3):
            sink.publish(sample_message("cam2", i))
        await sink.close(timeout=2.0)
        assert sample(registry, "streamer_sink_messages_sent_total", sink="jsonl:stdout") == 3
        return sink.name

    asyncio.run(scenario())
    lines = capsys.readouterr().out.splitlines()
    messages = [json.loads(line) for line in lines]
    assert [(m["stream"], m["frame"]) for m in messages] == [("cam2", 0), ("cam2", 1), ("cam2", 2)]
    assert messages[0] == sample_message("cam2", 0)
