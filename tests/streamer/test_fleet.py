"""Fleet identity (docs/operations.md, "A fleet of boxes"): ``box`` in config, messages and MQTT topics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.runner import Detections
from streamer.config import ConfigError, validate_config
from streamer.frames import Frame
from streamer.messages import MessageSpec, frame_result
from streamer.sinks import MqttSinkConfig
from tests.streamer.daemon_process import encode_video
from tests.streamer.mqtt_broker import Broker, Subscriber, needs_mosquitto

MQTT = {"type": "mqtt", "host": "broker.example", "topic": "fleet/{box}/{stream}/frames",
        "status_topic": "fleet/{box}/status"}


def test_box_defaults_to_the_host_name() -> None:
    cfg = validate_config({"sinks": [MQTT]})
    host = socket.gethostname()
    assert cfg.box == "" and cfg.box_name == host
    sink = cfg.sinks[0]
    assert isinstance(sink, MqttSinkConfig)
    assert sink.topic == f"fleet/{host}/{{stream}}/frames"
    assert sink.resolved_status_topic == f"fleet/{host}/status"


def test_configured_box_fills_topics() -> None:
    cfg = validate_config({"box": "edge-07", "sinks": [MQTT, {"type": "jsonl", "path": "-"}]})
    sink = cfg.sinks[0]
    assert isinstance(sink, MqttSinkConfig)
    assert (sink.topic, sink.status_topic) == ("fleet/edge-07/{stream}/frames", "fleet/edge-07/status")
    assert cfg.box_name == "edge-07"


@pytest.mark.parametrize("bad", ["a/b", "a+b", "#", " edge"])
def test_box_names_that_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="box"):
        validate_config({"box": bad})


def test_live_messages_carry_the_box() -> None:
    frame = Frame("cam1", "rtsp://cam", 3, 0.12, 1700000000.0, 0.0, np.zeros((8, 8, 3), np.uint8))
    det = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                     np.zeros((0, 28, 28), np.float32), (8, 8))
    spec = MessageSpec(("__background__", "a"), frozenset({"rle"}), 0.5, box="edge-07")
    msg = frame_result(frame, det, spec).messages["rle"]
    assert (msg["stream"], msg["box"]) == ("cam1", "edge-07")
    offline = MessageSpec(("__background__", "a"), frozenset({"rle"}), 0.5, live=False)
    assert "box" not in frame_result(frame, det, offline).messages["rle"]


def test_daemon_publishes_its_box(tmp_path: Path) -> None:
    """``streamer run`` end to end: a 3-frame file, the demo model, a JSONL sink: every message
    names the box."""
    video = encode_video(tmp_path / "cam.mp4", frames=3)
    out = tmp_path / "frames.jsonl"
    cfg = tmp_path / "streamer.toml"
    cfg.write_text(f'box = "edge-07"\n\n[[sources]]\nname = "cam1"\nurl = "{video}"\nrealtime = false\n\n'
                   f'[[sinks]]\ntype = "jsonl"\npath = "{out}"\n\n[metrics]\nenabled = false\n')
    proc = subprocess.run([sys.executable, "-m", "streamer.cli", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    assert [m["frame"] for m in messages] == [0, 1, 2]
    assert {(m["stream"], m["box"]) for m in messages} == {("cam1", "edge-07")}


@needs_mosquitto
def test_box_topics_and_status_when_the_box_dies(tmp_path: Path) -> None:
    """The fleet layout of docs/operations.md against a real broker: frames on
    fleet/<box>/<stream>/frames, retained online on fleet/<box>/status, and the last will's
    offline there once the box's daemon is killed."""
    broker = Broker(tmp_path)
    sub = Subscriber(broker.port, ["fleet/+/status", "fleet/+/+/frames"])
    video = encode_video(tmp_path / "cam.mp4", frames=3)
    cfg = tmp_path / "streamer.toml"
    cfg.write_text(f'box = "edge-07"\n\n[[sources]]\nname = "cam1"\nurl = "{video}"\nloop = true\n\n'
                   f'[[sinks]]\ntype = "mqtt"\nhost = "127.0.0.1"\nport = {broker.port}\n'
                   'topic = "fleet/{box}/{stream}/frames"\nstatus_topic = "fleet/{box}/status"\n'
                   'keepalive = 5\n\n[metrics]\nenabled = false\n')
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert sub.next_on("fleet/edge-07/status", timeout=60)[1] == "online"
        _, payload, _ = sub.next_on("fleet/edge-07/cam1/frames", timeout=60)
        assert json.loads(payload)["box"] == "edge-07"
        proc.kill()  # SIGKILL: no clean close, the broker publishes the last will
        proc.wait(timeout=10)
        assert sub.next_on("fleet/edge-07/status", timeout=15)[1] == "offline"
    finally:
        proc.kill()
        proc.wait()
        sub.close()
        broker.stop()
