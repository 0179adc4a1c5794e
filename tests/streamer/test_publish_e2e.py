"""The daemon end to end with real peers: a mosquitto subscriber and a ZeroMQ SUB socket receive
every frame of a file source, and the masks they decode equal what ``streamer process`` publishes
for the same frames with the same model.

Both run the one pipeline (``streamer.messages``), so equal inputs give equal bytes. The inputs
must be equal too: the model's float rounding depends on the batch it runs in and on the thread
count, and a mask probability at the threshold flips a pixel with it. So the daemon runs with
``max_batch_size = 1`` (as ``streamer process --batch 1``), and both run as fresh processes of
the same interpreter and environment (``DAEMON_ENV``: one OpenMP thread)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import zmq

from tests.streamer.daemon_process import (
    DAEMON_ENV,
    REPO,
    DaemonProcess,
    encode_video,
    free_port,
    wait_for,
)
from tests.streamer.mqtt_broker import Broker, Subscriber, needs_mosquitto

FRAMES = 12

pytestmark = needs_mosquitto


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
        config = tmp_path / "streamer.toml"
        config.write_text("[batching]\nmax_batch_size = 1\n")
        args = ["--config", str(config), "--source", f"clip={clip}", "--model", str(tiny_model_path),
                "--metrics-address", "off",
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

    ref_out = tmp_path / "process.jsonl"
    done = subprocess.run([sys.executable, "-m", "streamer.cli", "process", str(clip), "--model", str(tiny_model_path),
                           "--batch", "1", "--out", str(ref_out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **DAEMON_ENV})
    assert done.returncode == 0, done.stderr
    ref = {m["frame"]: m for m in map(json.loads, ref_out.read_text().splitlines())}
    assert sorted(got_mqtt) == sorted(ref) == list(range(FRAMES))
    # ZeroMQ's slow-joiner rule may cost the first messages before the subscription lands.
    assert {t for t, _ in got_zmq} == {"clip"} and len(got_zmq) >= FRAMES - 3
    for msg in [*got_mqtt.values(), *(m for _, m in got_zmq)]:
        want = ref[msg["frame"]]
        assert msg["stream"] == "clip" and (msg["width"], msg["height"]) == (want["width"], want["height"])
        assert [i["label"] for i in msg["instances"]] == [i["label"] for i in want["instances"]]
        for a, b in zip(msg["instances"], want["instances"], strict=True):
            assert (a["box"], a["score"], a["mask"]) == (b["box"], b["score"], b["mask"])
