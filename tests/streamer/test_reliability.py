"""Operator-grade reliability, reproduced with real processes and real inputs.

- A truncated faststart MP4 and a text file get the same verdict from ``streamer run`` as from
  ``streamer process`` (one decode path, ``streamer.media.open_media``).
- Every stream failed for good: the daemon exits 1 so that systemd's ``Restart=on-failure`` acts.
- A ``.pth`` that is not a checkpoint: one line of ours, never PyTorch's ``weights_only`` advice.
- The stall watchdog fires within ``stall_timeout_s`` ± 1 s over RTSP/TCP and RTSP/UDP, with a
  readable reason; the input frame rate after a reconnect is the camera's, not the burst's.
- SIGTERM: the ``drained:`` line says what was drained and what each sink delivered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from streamer.batching import LoopHandoff, StreamQueue
from streamer.config import SourceConfig
from streamer.frames import Frame
from streamer.metrics import StreamerCollector
from streamer.sources import SourceWorker
from tests.streamer.daemon_process import (
    REPO,
    DaemonProcess,
    RtspServer,
    encode_video,
    free_port,
    jsonl_sink,
    read_jsonl,
    require_gst_rtsp,
    wait_for,
    write_daemon_config,
)

pytestmark = pytest.mark.timeout(180)


def process_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m streamer.cli --log-level warning process ARGV``."""
    return subprocess.run([sys.executable, "-m", "streamer.cli", "--log-level", "warning", "process", *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def test_truncated_file_fails_in_run_as_in_process(media_dir: Path, tmp_path: Path, tiny_model_path: Path) -> None:
    """A faststart MP4 cut to 60 %: ``run`` publishes the decodable frames, marks the stream
    ``failed`` with the frame where it broke and exits 1 — the verdict of ``streamer process``."""
    cut = media_dir / "truncated.mp4"
    out = tmp_path / "run.jsonl"
    args = ["--source", f"clip={cut}", "--model", str(tiny_model_path), "--sink", f"jsonl:{out}",
            "--metrics-address", "off"]
    with DaemonProcess(args, tmp_path) as daemon:
        assert daemon.wait(120) == 1, daemon.log()
    log = daemon.log()
    failed = re.search(r"stream clip: up -> failed \(.*?\): .*?(truncated after frame (\d+): .*)", log)
    assert failed, log
    assert [m["frame"] for m in read_jsonl(out)] == list(range(int(failed.group(2)) + 1))
    assert "every source has ended (failed: clip)" in log and "Traceback" not in log

    offline = process_cli(str(cut), "--model", str(tiny_model_path), "--out", str(tmp_path / "process.jsonl"))
    assert offline.returncode == 1, offline.stderr
    assert error_lines(offline.stderr) == [f"error: {cut}: {failed.group(1)}"]


def test_text_file_and_dead_camera_fail_for_good_and_run_exits_1(
        media_dir: Path, tmp_path: Path, tiny_model_path: Path) -> None:
    """A text file (FFmpeg's ``tty`` demuxer would render it as video) is refused at open, as by
    ``streamer process``; a camera that never answers fails after ``max_attempts``. Every stream
    failed for good: exit 1, nothing published."""
    notes = media_dir / "notes.txt"
    out = tmp_path / "run.jsonl"
    config = tmp_path / "streamer.toml"
    write_daemon_config(config, tiny_model_path, jsonl_sink(out), f"""
[[sources]]
name = "notes"
url = "{notes}"
[[sources]]
name = "dead"
url = "rtsp://127.0.0.1:{free_port()}/cam"
open_timeout_s = 1
reconnect = {{ initial_delay_s = 0.1, max_delay_s = 0.2, max_attempts = 2 }}
""")
    with DaemonProcess(["--config", str(config)], tmp_path) as daemon:
        assert daemon.wait(120) == 1, daemon.log()
    log = daemon.log()
    assert re.search(r"stream notes: connecting -> failed \(.*\): .*FFmpeg reads it as 'tty'", log), log
    assert re.search(r"stream dead: .* -> failed \(.*\): .*gave up after 2 attempts", log), log
    assert "every source has ended (failed: dead, notes)" in log
    assert read_jsonl(out) == []

    offline = process_cli(str(notes), "--out", str(tmp_path / "process.jsonl"))
    assert offline.returncode == 1
    assert error_lines(offline.stderr) == [
        f"error: {notes}: not a readable video or image (FFmpeg reads it as 'tty' text)"]


class _Opaque:
    """Any Python object: what a pickled training script's state might hold."""


def test_foreign_pth_is_one_line_of_ours(media_dir: Path, tmp_path: Path, long_clip: Path) -> None:
    """A pickle of arbitrary objects named ``.pth``: ``process`` and ``run`` say in one line what
    the file holds and what was expected, never PyTorch's multi-line ``weights_only`` advice."""
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": _Opaque()}, foreign)
    offline = process_cli(str(media_dir / "photo.png"), "--model", str(foreign))
    assert offline.returncode == 1
    assert offline.stderr.splitlines() == error_lines(offline.stderr)
    (line,) = error_lines(offline.stderr)
    assert line.startswith(f"error: {foreign}: cannot load the model: holds Python objects besides tensors")
    assert "expected a torchvision Mask R-CNN state dict" in line
    assert "weights_only" not in offline.stderr

    args = ["--source", f"clip={long_clip}", "--model", str(foreign), "--metrics-address", "off"]
    with DaemonProcess(args, tmp_path) as daemon:
        assert daemon.wait(60) == 1
    failures = [line for line in daemon.log().splitlines() if "startup failed" in line]
    assert len(failures) == 1 and "holds Python objects besides tensors" in failures[0]
    assert "weights_only" not in daemon.log() and "Traceback" not in daemon.log()


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 frames at 25 fps (12 s), 128x96."""
    return encode_video(tmp_path_factory.mktemp("reliability") / "long.mp4", frames=300, fps=25)


def test_sigterm_drain_line_says_what_was_drained(tmp_path: Path, long_clip: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    args = ["--source", f"clip={long_clip}", "--model", str(tiny_model_path), "--sink", f"jsonl:{out}",
            "--metrics-address", "off"]
    with DaemonProcess(args, tmp_path) as daemon:
        assert wait_for(lambda: len(read_jsonl(out)) >= 5, 90), daemon.log()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.log()
    drained = re.search(r"drained: (\d+) queued frame\(s\) and (\d+) batch\(es\) in flight at the start; "
                        r"(\d+) frame\(s\) published while draining, (\d+) in all; "
                        rf"sink jsonl:{re.escape(str(out))}: (\d+) sent, (\d+) dropped", daemon.log())
    assert drained, daemon.log()
    published, sent, dropped = (int(drained.group(i)) for i in (4, 5, 6))
    assert published == sent + dropped == len(read_jsonl(out)) and dropped == 0


# -- live sources against the real RTSP server --------------------------------------------------

def _worker(server: RtspServer, loop: asyncio.AbstractEventLoop, frames: list[Frame],
            **cfg: object) -> SourceWorker:
    queue = StreamQueue("cam", 8, True, lambda f, r: None)
    queue.listen(lambda: frames.extend(queue.pop() for _ in range(len(queue))))
    source = SourceConfig.model_validate({"name": "cam", "url": server.url, "open_timeout_s": 3.0, **cfg})
    return SourceWorker(source, LoopHandoff(loop, queue, threading.Event()), rng=random.Random(1))


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_stall_is_detected_within_the_setting_with_a_readable_reason(
        transport: str, caplog: pytest.LogCaptureFixture) -> None:
    """SIGSTOP freezes the server: the stream leaves ``up`` within ``stall_timeout_s`` ± 1 s
    (it took twice the setting: FFmpeg's first read timeout returns the parser's held-back
    packet) and the reason is ours, not ``[Errno 1414092869] Immediate exit requested``."""
    require_gst_rtsp()
    stall = 2.0

    async def scenario(server: RtspServer) -> float:
        loop = asyncio.get_running_loop()
        frames: list[Frame] = []
        worker = _worker(server, loop, frames, transport=transport, stall_timeout_s=stall)
        worker.start()
        try:
            while len(frames) < 10:
                await asyncio.sleep(0.02)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            frozen = time.monotonic()
            while worker.state == "up":
                await asyncio.sleep(0.02)
            return time.monotonic() - frozen
        finally:
            if server.proc is not None:
                os.kill(server.proc.pid, signal.SIGCONT)
            worker.stop()
            await asyncio.to_thread(worker.join, 10.0)

    caplog.set_level(logging.INFO, logger="streamer.sources")
    with RtspServer(fps=15) as server:
        detected = asyncio.run(asyncio.wait_for(scenario(server), 90))
    print(f"\n{transport}: stall detected {detected:.2f} s after the server froze (setting {stall:g} s)")
    assert stall - 1.0 <= detected <= stall + 1.0
    assert f"up -> backoff ({server.url}): stalled: no data for 2 s (stall_timeout_s)" in caplog.text
    assert "Errno" not in caplog.text and "Immediate exit" not in caplog.text


def test_input_fps_after_a_reconnect_is_the_cameras_rate() -> None:
    """Server killed and restarted: ``streamer_stream_input_fps`` never reads far above the
    camera's 15 fps (it read 38: the window spanned the outage and the reconnect's burst)."""
    require_gst_rtsp()
    registry = CollectorRegistry()

    async def scenario(server: RtspServer) -> list[float]:
        loop = asyncio.get_running_loop()
        frames: list[Frame] = []
        worker = _worker(server, loop, frames, transport="tcp",
                         reconnect={"initial_delay_s": 0.2, "max_delay_s": 0.5})
        StreamerCollector(registry).watch_stream("cam", worker)
        worker.start()
        readings: list[float] = []
        try:
            while len(frames) < 30:
                await asyncio.sleep(0.05)
            server.stop()
            while worker.state == "up":
                await asyncio.sleep(0.05)
            await asyncio.sleep(2.0)
            await asyncio.to_thread(server.start)
            before = len(frames)
            while len(frames) < before + 60:
                value = registry.get_sample_value("streamer_stream_input_fps", {"stream": "cam"})
                readings.append(value or 0.0)
                await asyncio.sleep(0.05)
            return readings
        finally:
            worker.stop()
            await asyncio.to_thread(worker.join, 10.0)

    with RtspServer(fps=15) as server:
        readings = asyncio.run(asyncio.wait_for(scenario(server), 120))
    print(f"\ninput fps after the reconnect: max {max(readings):.1f}")
    assert max(readings) <= 15 * 1.35
