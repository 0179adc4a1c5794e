"""Live RTSP sources against a real GStreamer RTSP server on 127.0.0.1 (tests/streamer/rtsp_server.py).

The server runs under Debian's /usr/bin/python3 (python3-gi); these tests skip with the
package names when it is not installed.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from streamer.batching import LoopHandoff, StreamQueue
from streamer.config import SourceConfig
from streamer.frames import Frame
from streamer.sources import SourceWorker
from tests.streamer.daemon_process import (
    DaemonProcess,
    RtspServer,
    free_port,
    jsonl_sink,
    read_jsonl,
    require_gst_rtsp,
    wait_for,
    write_daemon_config,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _gst() -> None:
    require_gst_rtsp()


def test_stall_watchdog_reconnects_a_frozen_rtsp_stream() -> None:
    """SIGSTOP freezes the server: no packet for stall_timeout_s → backoff and reconnect
    attempts; SIGCONT → the stream comes back up and frames flow again."""

    async def scenario(server: RtspServer) -> tuple[list[str], list[str], list[Frame], float]:
        loop = asyncio.get_running_loop()
        frames: list[Frame] = []
        queue = StreamQueue("cam", 8, True, lambda f, r: None)
        queue.listen(lambda: frames.extend(queue.pop() for _ in range(len(queue))))
        states: list[str] = []
        cfg = SourceConfig.model_validate({
            "name": "cam", "url": server.url, "transport": "tcp", "stall_timeout_s": 1.5,
            "open_timeout_s": 2.0, "reconnect": {"initial_delay_s": 0.2, "max_delay_s": 1.0}})
        worker = SourceWorker(cfg, LoopHandoff(loop, queue, threading.Event()), rng=random.Random(0),
                              on_state=lambda stream, state: states.append(state))
        worker.start()
        try:
            while len(frames) < 10:
                await asyncio.sleep(0.05)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            while "backoff" not in states:
                await asyncio.sleep(0.05)
            before = len(frames)
            await asyncio.sleep(1.0)
            os.kill(server.proc.pid, signal.SIGCONT)
            resumed = loop.time()
            while len(frames) < before + 10:
                await asyncio.sleep(0.05)
            running = list(states)
            recovery = loop.time() - resumed
        finally:
            worker.stop()
            await asyncio.to_thread(worker.join, 5.0)
        return running, states, frames, recovery

    with RtspServer(fps=15) as server:
        running, states, frames, recovery = asyncio.run(asyncio.wait_for(scenario(server), 60))
    print(f"\nrecovered {recovery:.2f} s after the server resumed; states {states}")
    assert running[:2] == ["connecting", "up"] and "backoff" in running and running[-1] == "up"
    assert states == [*running, "ended"], "stop() ends the stream"
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))
    assert frames[0].image.shape == (96, 128, 3)


def test_daemon_reconnects_after_server_restart_and_failing_streams_stay_apart(
        tmp_path: Path, tiny_model_path: Path) -> None:
    """Three streams in one daemon: a real camera, a closed port, a corrupt file. The camera is
    published; the others back off / fail without disturbing it. Killing and restarting the
    server: the camera reconnects with backoff and publishing continues."""
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(4000))
    out = tmp_path / "out.jsonl"
    server = RtspServer(fps=15).start()
    config = tmp_path / "streamer.toml"
    write_daemon_config(config, tiny_model_path, jsonl_sink(out), f"""
[[sources]]
name = "cam"
url = "{server.url}"
transport = "tcp"
stall_timeout_s = 3
reconnect = {{ initial_delay_s = 0.5, max_delay_s = 2.0 }}
[[sources]]
name = "dead"
url = "rtsp://user:secret@127.0.0.1:{free_port()}/cam"
open_timeout_s = 1
reconnect = {{ initial_delay_s = 0.2, max_delay_s = 1.0 }}
[[sources]]
name = "bad"
url = "{bad}"
""", metrics='address = "127.0.0.1:0"')

    def cam_count() -> int:
        return sum(m["stream"] == "cam" for m in read_jsonl(out))

    try:
        with DaemonProcess(["--config", str(config)], tmp_path) as daemon:
            assert wait_for(lambda: cam_count() >= 15, 60), daemon.log()
            port = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", daemon.log())
            assert port
            with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics", timeout=5) as r:
                text = r.read().decode()
            assert 'streamer_stream_state{state="failed",stream="bad"} 1.0' in text
            assert 'streamer_stream_state{state="up",stream="cam"} 1.0' in text
            assert re.search(r'streamer_reconnects_total\{stream="dead"\} [1-9]', text)

            server.stop()
            assert daemon.wait_log("stream cam: up -> backoff", 15), daemon.log()
            published_before = cam_count()
            time.sleep(1.0)
            server.start()
            restarted = time.monotonic()
            assert wait_for(lambda: cam_count() > published_before, 30), daemon.log()
            reconnect_s = time.monotonic() - restarted
            print(f"\ncamera published again {reconnect_s:.2f} s after the RTSP server restarted")
            assert reconnect_s < 15
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(30) == 0, daemon.log()
    finally:
        server.stop()
    log = daemon.log()
    assert "stream bad: connecting -> failed" in log
    assert "secret" not in log and "rtsp://***@127.0.0.1" in log
    cam = [m["frame"] for m in read_jsonl(out) if m["stream"] == "cam"]
    assert cam == sorted(set(cam)), "camera frames in order, none twice"
    assert not any(m["stream"] in ("dead", "bad") for m in read_jsonl(out))
