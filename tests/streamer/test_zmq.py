"""The ZeroMQ sink with real SUB sockets over TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
import zmq
from prometheus_client import CollectorRegistry

from streamer.schema import decode_rle
from streamer.sinks import ZmqSinkConfig, create_sink
from tests.streamer.sink_helpers import sample, sample_message, watched


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def subscriber(context: zmq.Context[zmq.Socket[bytes]], endpoint: str, prefix: bytes,
               **options: int) -> zmq.Socket[bytes]:
    sub = context.socket(zmq.SUB)
    for option, value in options.items():
        sub.setsockopt(getattr(zmq, option), value)
    sub.setsockopt(zmq.SUBSCRIBE, prefix)
    sub.setsockopt(zmq.RCVTIMEO, 5000)
    sub.connect(endpoint)
    return sub


async def until_subscribed(sink: Any, sub: zmq.Socket[bytes], stream: str) -> None:
    """Publish probe frames (index -1) until ``sub`` receives one: ZeroMQ subscriptions take a
    moment to reach the publisher, and messages before that are not delivered to ``sub``."""
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    for _ in range(200):
        sink.publish(sample_message(stream, -1))
        if await asyncio.to_thread(poller.poll, 20):
            while poller.poll(50):
                sub.recv_multipart()
            return
    pytest.fail("the subscription never reached the sink")


def test_subscribers_receive_multipart_stream_and_json() -> None:
    endpoint = free_endpoint()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()

    async def scenario() -> None:
        registry = CollectorRegistry()
        sink = watched(create_sink(ZmqSinkConfig(type="zmq", endpoint=endpoint)), registry)
        assert sink.name == f"zmq:{endpoint}"
        await sink.start()
        everything = subscriber(context, endpoint, b"")
        only_cam2 = subscriber(context, endpoint, b"cam2")
        await until_subscribed(sink, everything, "cam1")
        await until_subscribed(sink, only_cam2, "cam2")
        while everything.poll(100):
            everything.recv_multipart()
        assert sample(registry, "streamer_sink_connected", sink=sink.name) == 1
        sent_before = sample(registry, "streamer_sink_messages_sent_total", sink=sink.name)
        for i in range(5):
            sink.publish(sample_message("cam1", i))
            sink.publish(sample_message("cam2", i))
        got = [await asyncio.to_thread(everything.recv_multipart) for _ in range(10)]
        assert [(s.decode(), json.loads(p)["frame"]) for s, p in got] == [
            (cam, i) for i in range(5) for cam in ("cam1", "cam2")]
        first = json.loads(got[0][1])
        assert first == sample_message("cam1", 0)
        assert decode_rle(first["instances"][1]["mask"]).shape == (48, 64)
        cam2 = [await asyncio.to_thread(only_cam2.recv_multipart) for _ in range(5)]
        assert {s for s, _ in cam2} == {b"cam2"}
        assert [json.loads(p)["frame"] for _, p in cam2] == list(range(5))
        await sink.close(timeout=2.0)
        assert sample(registry, "streamer_sink_messages_sent_total", sink=sink.name) == sent_before + 10
        assert sample(registry, "streamer_sink_connected", sink=sink.name) == 0
        everything.close(0)
        only_cam2.close(0)

    try:
        asyncio.run(scenario())
    finally:
        context.term()


def test_stalled_subscriber_never_blocks_publish_and_drops_oldest() -> None:
    """A subscriber that stops reading: the sink's XPUB hits its high-water mark, publish() still
    returns at once, the oldest messages are dropped and counted, and the newest get through once
    the subscriber reads again."""
    endpoint = free_endpoint()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pad = "x" * (256 * 1024)  # large messages fill the TCP buffers quickly

    async def scenario() -> None:
        registry = CollectorRegistry()
        sink = watched(create_sink(ZmqSinkConfig(type="zmq", endpoint=endpoint, buffer=4)), registry)
        await sink.start()
        sub = subscriber(context, endpoint, b"", RCVHWM=1, RCVBUF=4096)
        await until_subscribed(sink, sub, "cam1")
        worst = 0.0
        for i in range(120):
            msg = sample_message("cam1", i)
            msg["pad"] = pad
            start = time.perf_counter()
            sink.publish(msg)
            worst = max(worst, time.perf_counter() - start)
            await asyncio.sleep(0.002)
        dropped = sample(registry, "streamer_sink_messages_dropped_total", sink=sink.name)
        assert worst < 0.01, f"publish() blocked for {worst:.3f} s"
        assert dropped > 0
        frames = []
        while 119 not in frames:
            _, payload = await asyncio.to_thread(sub.recv_multipart)
            frames.append(json.loads(payload)["frame"])
        assert frames == sorted(frames)  # in order, with gaps where messages were dropped
        assert len(frames) <= 120 - dropped
        await sink.close(timeout=1.0)
        sub.close(0)

    try:
        asyncio.run(scenario())
    finally:
        context.term()


def test_endpoint_in_use_is_retried_not_raised() -> None:
    endpoint = free_endpoint()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    squatter = context.socket(zmq.PUB)
    squatter.bind(endpoint)

    async def scenario() -> None:
        registry = CollectorRegistry()
        sink = watched(create_sink(ZmqSinkConfig(type="zmq", endpoint=endpoint)), registry)
        await sink.start()
        sink.publish(sample_message())
        for _ in range(100):
            if sample(registry, "streamer_sink_errors_total", sink=sink.name) >= 1:
                break
            await asyncio.sleep(0.02)
        assert sample(registry, "streamer_sink_errors_total", sink=sink.name) >= 1
        assert sample(registry, "streamer_sink_connected", sink=sink.name) == 0
        squatter.close(0)
        for _ in range(200):
            if sample(registry, "streamer_sink_connected", sink=sink.name) == 1:
                break
            await asyncio.sleep(0.02)
        assert sample(registry, "streamer_sink_connected", sink=sink.name) == 1
        await sink.close(timeout=1.0)

    try:
        asyncio.run(scenario())
    finally:
        context.term()
