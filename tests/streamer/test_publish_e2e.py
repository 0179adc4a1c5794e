"""The daemon end to end with real peers: a mosquitto subscriber and a ZeroMQ SUB socket receive
every frame of a file source, and the masks they decode equal what ``streamer process`` publishes
for the same frames with the same model."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from engines.loading import load_runner
from streamer.process_cli import ProcessOptions, process_inputs
from streamer.schema import decode_rle
from tests.streamer.conftest_daemon import DaemonProcess, encode_video, free_port, wait_for
from tests.streamer.test_mqtt import MOSQUITTO, Broker, Subscriber

FRAMES = 12

pytestmark = pytest.mark.skipif(
    not Path(MOSQUITTO).exists(), reason="needs the mosquitto broker (apt-get install mosquitto)")


def _zmq_collect(endpoint: str, out: list[tuple[str, dict[str, Any]]], stop: threading.Event) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 200)
    sub.connect(endpoint)
    try:
        while not stop.is_set():
            try:
                topic, payload = sub.recv_multipart()
            except zmq.Again:
                continue
            out.append((topic.decode(), json.loads(payload)))
    finally:
        sub.close(0)
        ctx.term()


def test_mqtt_and_zmq_receive_the_frames_streamer_process_publishes(tmp_path: Path, tiny_model_path: Path) -> None:
    clip = encode_video(tmp_path / "clip.mp4", frames=FRAMES)
    broker = Broker(tmp_path)
    sub = Subscriber(broker.port, ["cams/#"])
    zport = free_port()
    got_zmq: list[tuple[str, dict[str, Any]]] = []
    stop = threading.Event()
    zthread = threading.Thread(target=_zmq_collect, args=(f"tcp://127.0.0.1:{zport}", got_zmq, stop), daemon=True)
    zthread.start()
    got_mqtt: dict[int, dict[str, Any]] = {}
    try:
        args = ["--source", f"clip={clip}", "--model", str(tiny_model_path), "--metrics-address", "off",
                "--sink", f"mqtt://127.0.0.1:{broker.port}/cams/{{stream}}?qos=1",
                "--sink", f"zmq:tcp://127.0.0.1:{zport}"]
        with DaemonProcess(args, tmp_path) as daemon:
            def drain() -> bool:
                while not sub.messages.empty():
                    topic, payload, _ = sub.messages.get()
                    if topic == "cams/clip":
                        msg = json.loads(payload)
                        got_mqtt[msg["frame"]] = msg
                return len(got_mqtt) == FRAMES
            assert wait_for(drain, timeout=120), daemon.log()
            assert daemon.wait(60) == 0, daemon.log()
    finally:
        stop.set()
        zthread.join(5)
        sub.close()
        broker.stop()

    ref_out = io.StringIO()
    assert not process_inputs([str(clip)], load_runner(tiny_model_path), ref_out, ProcessOptions())
    ref = {m["frame"]: m for m in map(json.loads, ref_out.getvalue().splitlines())}
    assert sorted(got_mqtt) == sorted(ref) == list(range(FRAMES))
    # ZeroMQ's slow-joiner rule may cost the first messages before the subscription lands.
    assert {t for t, _ in got_zmq} == {"clip"} and len(got_zmq) >= FRAMES - 3
    for msg in [*got_mqtt.values(), *(m for _, m in got_zmq)]:
        want = ref[msg["frame"]]
        assert msg["stream"] == "clip" and (msg["width"], msg["height"]) == (want["width"], want["height"])
        assert [i["label"] for i in msg["instances"]] == [i["label"] for i in want["instances"]]
        for a, b in zip(msg["instances"], want["instances"], strict=True):
            assert np.array_equal(decode_rle(a["mask"]), decode_rle(b["mask"]))
