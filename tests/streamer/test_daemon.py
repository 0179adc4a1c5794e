"""``streamer run`` as a real process: systemd notifications, signals, reload, overload.

Each test starts ``python -m streamer.cli run`` with the tiny test model on small (128x96)
frames and talks to it only from outside: a NOTIFY_SOCKET datagram socket, real signals, the
JSONL it writes and its /metrics endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamer.config import StreamerConfig
from streamer.daemon import Daemon
from streamer.sdnotify import Notifier, WatchdogPinger, pipeline_alive, watchdog_period
from tests.streamer.daemon_process import (
    DaemonProcess,
    NotifyListener,
    encode_video,
    jsonl_sink,
    read_jsonl,
    wait_for,
    write_daemon_config,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 frames at 25 fps (12 s), 128x96."""
    return encode_video(tmp_path_factory.mktemp("daemon") / "long.mp4", frames=300, fps=25)


def write_config(path: Path, body: str, model: Path, out: Path) -> Path:
    return write_daemon_config(path, model, jsonl_sink(out), body, metrics='address = "127.0.0.1:0"')


def metrics_text(daemon: DaemonProcess) -> str:
    match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", daemon.log())
    assert match, "the daemon did not log its metrics address"
    with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/metrics", timeout=5) as resp:
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus exposition ``text`` (0 if absent)."""
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- sdnotify, in-process ------------------------------------------------------------------------

def test_notifier_reaches_an_abstract_namespace_socket() -> None:
    name = f"streamer-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(2)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier is not None
        assert notifier.ready("2 streams up")
        assert listener.recv(1024) == b"READY=1\nSTATUS=2 streams up"
        assert notifier.status("a\nb")
        assert listener.recv(1024) == b"STATUS=a b"
        notifier.close()


def test_notifier_absent_or_unreachable_never_raises(tmp_path: Path) -> None:
    assert Notifier.from_env({}) is None
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert notifier.watchdog() is False


def test_watchdog_period_honours_usec_and_pid() -> None:
    assert watchdog_period({"WATCHDOG_USEC": "3000000"}) == 3.0
    assert watchdog_period({}) is None
    assert watchdog_period({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_period({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "2"}, pid=2) == 3.0


def test_watchdog_rule_stops_pinging_for_a_stuck_inference_worker() -> None:
    now = 100.0
    assert pipeline_alive(now, last_completed=99.0, busy_since=99.5, pending=3, period=2.0)
    assert pipeline_alive(now, last_completed=10.0, busy_since=None, pending=0, period=2.0)  # idle
    assert not pipeline_alive(now, last_completed=90.0, busy_since=90.0, pending=3, period=2.0)
    assert not pipeline_alive(now, last_completed=90.0, busy_since=None, pending=5, period=2.0)


class FailingRunner:
    """A model whose every batch fails: each frame is dropped for ``inference_error``."""

    info = SimpleNamespace(name="failing", backend="pytorch", device="cpu",
                           class_names=("__background__", "thing"))

    def infer(self, images: list[Any]) -> list[Any]:
        raise RuntimeError("out of memory")

    def close(self) -> None:
        pass


def test_watchdog_pinger_pings_twice_per_period_and_withholds_while_stuck(caplog: pytest.LogCaptureFixture) -> None:
    name = f"streamer-pinger-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.setblocking(False)

        def received() -> list[bytes]:
            got = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    got.append(listener.recv(64))
            return got

        pinger = WatchdogPinger(Notifier("@" + name), period=2.0)
        alive = True
        with caplog.at_level(logging.INFO, logger="streamer.sdnotify"):
            for now, expect in [(0.0, [b"WATCHDOG=1"]), (0.5, []), (1.0, [b"WATCHDOG=1"])]:
                pinger.tick(now, lambda _: alive, lambda: 0.0)
                assert received() == expect, now
            alive = False
            for now in (2.0, 3.0, 4.0):  # stuck: due ticks send nothing; one warning
                pinger.tick(now, lambda _: alive, lambda: 0.5)
                assert received() == []
            alive = True
            pinger.tick(5.0, lambda _: alive, lambda: 4.9)
            assert received() == [b"WATCHDOG=1"]
        messages = [r.getMessage() for r in caplog.records]
        assert messages == ["inference has not completed a batch for 1.5 s; withholding the systemd watchdog ping",
                            "inference completes batches again; systemd watchdog pings resumed"]


def test_status_line_and_metrics_read_the_same_counters(tmp_path: Path) -> None:
    """``STATUS=`` and ``/metrics`` count published and dropped frames from the same counters,
    inference failures included."""
    clip = encode_video(tmp_path / "clip.mp4", frames=12)
    cfg = StreamerConfig.model_validate({
        "sources": [{"name": "clip", "url": str(clip), "realtime": False}],
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
        "metrics": {"enabled": False}})
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry=registry, runner=FailingRunner())  # type: ignore[arg-type]
    assert asyncio.run(daemon.run()) == 0
    dropped = registry.get_sample_value("streamer_frames_dropped_total",
                                        {"stream": "clip", "reason": "inference_error"})
    published = registry.get_sample_value("streamer_frames_published_total", {"stream": "clip"})
    assert (dropped, published) == (12, 0)
    assert daemon.status_line() == "stopped; 0/1 streams up (1 ended); 0 frames published, 12 dropped, 0 queued"


def test_the_last_source_to_end_starts_draining_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The end of the last stream wakes the supervision tick: with the tick made 60 s long, the
    daemon still notices within a fraction of a second (it used to wait for the next tick).

    The decode thread is made to outrun the loop: the first tick begins only once the thread has
    ended, with no yield between, so its frames are still on their way to the loop when the tick
    looks. Draining must wait for them, not for the thread's state (it once did: in CI, under
    load, all 4 frames were dropped)."""
    from streamer.replay import ReplayRunner

    running = Daemon._running

    async def running_after_the_threads_end(daemon: Daemon) -> int:
        for stream in daemon.streams.values():
            assert stream.worker.join(10)
        return await running(daemon)

    monkeypatch.setattr("streamer.daemon.TICK_S", 60.0)
    monkeypatch.setattr(Daemon, "_running", running_after_the_threads_end)
    clip = encode_video(tmp_path / "clip.mp4", frames=4)
    cfg = StreamerConfig.model_validate({
        "batching": {"queue_size": 8},  # room for every frame: the thread ends before the loop takes one
        "sources": [{"name": "clip", "url": str(clip), "realtime": False}],
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
        "metrics": {"enabled": False}})
    caplog.set_level(logging.INFO)
    daemon = Daemon(cfg, registry=CollectorRegistry(), runner=ReplayRunner(2))
    assert asyncio.run(asyncio.wait_for(daemon.run(), 30)) == 0
    times = {r.getMessage(): r.created for r in caplog.records}
    ended = next(t for m, t in times.items() if m.startswith("stream clip: up -> ended"))
    noticed = times["every source has ended"]
    assert abs(noticed - ended) < 1.0, noticed - ended  # either line may be logged first
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 4


def test_frames_leave_their_pixels_behind_once_inferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner gets every frame's pixels; postprocessing, tracking and the sinks get the frames
    without them (``Frame.without_image``), so a frame's buffer is freed when inference is done,
    not when its batch is published. The messages still carry the frame size (from the
    detections)."""
    import streamer.inference
    from streamer.replay import ReplayRunner

    seen: dict[str, list[tuple[int, ...]]] = {"runner": [], "postprocess": []}

    class Recording(ReplayRunner):
        def infer(self, frames: Any) -> Any:
            seen["runner"] += [f.shape for f in frames]
            return super().infer(frames)

    postprocess = streamer.inference._postprocess

    def recording_postprocess(frames: Any, *args: Any) -> Any:
        seen["postprocess"] += [f.image.shape for f in frames]
        return postprocess(frames, *args)

    monkeypatch.setattr(streamer.inference, "_postprocess", recording_postprocess)
    clip = encode_video(tmp_path / "clip.mp4", frames=6)
    cfg = StreamerConfig.model_validate({
        "sources": [{"name": "clip", "url": str(clip), "realtime": False}],
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
        "metrics": {"enabled": False}})
    assert asyncio.run(asyncio.wait_for(Daemon(cfg, registry=CollectorRegistry(), runner=Recording(2)).run(), 30)) == 0
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert len(lines) == 6 and {(m["height"], m["width"]) for m in lines} == {(96, 128)}
    assert seen["runner"] == [(96, 128, 3)] * 6
    assert seen["postprocess"] == [(0, 0, 3)] * 6


# -- the real process ----------------------------------------------------------------------------

def test_notify_and_sigterm_publish_every_frame_exactly_once(
        tmp_path: Path, long_clip: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    config = write_config(tmp_path / "streamer.toml", f"""
[[sources]]
name = "clip"
url = "{long_clip}"
""", tiny_model_path, out)
    listener = NotifyListener(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "5000000"}
    with DaemonProcess(["--config", str(config)], tmp_path, env) as daemon:
        assert listener.collect("READY=1", timeout=60), daemon.log()
        assert listener.collect("WATCHDOG=1", timeout=10), listener.messages
        assert wait_for(lambda: len(read_jsonl(out)) >= 8, timeout=60), daemon.log()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()
        assert listener.collect("STOPPING=1", timeout=2), listener.messages
    frames = [m["frame"] for m in read_jsonl(out)]
    assert 8 <= len(frames) < 300
    assert frames == list(range(len(frames))), "each frame index exactly once, in order"
    lines = listener.lines()
    assert any(line.startswith("STATUS=") and "streams up" in line for line in lines)
    assert lines.index("READY=1") < lines.index("STOPPING=1")
    log = daemon.log()
    assert "phase running -> draining" in log and "phase draining -> stopped" in log
    assert ", uvloop event loop" in log  # event_loop = "auto": the signals above reached uvloop's handlers
    msg = read_jsonl(out)[0]
    assert msg["stream"] == "clip" and abs(msg["capture_time"] - time.time()) < 120


def test_sighup_adds_removes_and_restarts_streams(tmp_path: Path, long_clip: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    config = tmp_path / "streamer.toml"

    def sources(*names: str, stall: float = 10.0) -> str:
        return "".join(f'\n[[sources]]\nname = "{n}"\nurl = "{long_clip}"\nloop = true\n'
                       f'stall_timeout_s = {stall}\n' for n in names)

    def frames_of(stream: str) -> list[int]:
        return [m["frame"] for m in read_jsonl(out) if m["stream"] == stream]

    write_config(config, sources("a", "keep", "chg"), tiny_model_path, out)
    with DaemonProcess(["--config", str(config)], tmp_path) as daemon:
        assert wait_for(lambda: all(frames_of(n) for n in ("a", "keep", "chg")), 60), daemon.log()
        config.write_text(config.read_text() + "\n[batching]\nmax_batch = 2\n")
        daemon.signal(signal.SIGHUP)
        assert daemon.wait_log("SIGHUP: the config file is invalid; keeping the running config", 10)
        assert "batching.max_batch = 2: unknown key" in daemon.log()
        write_config(config, sources("keep", "b") + sources("chg", stall=9.0), tiny_model_path, out)
        daemon.signal(signal.SIGHUP)
        assert daemon.wait_log("SIGHUP: streams reloaded: added ['b'], removed ['a'], restarted ['chg'], "
                               "unchanged 1", 10), daemon.log()
        assert wait_for(lambda: frames_of("b"), 30), daemon.log()
        count_a, keep_before, chg_before = len(frames_of("a")), frames_of("keep"), frames_of("chg")
        time.sleep(1.5)
        text = metrics_text(daemon)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()
    assert len(frames_of("a")) == count_a, "a removed stream must stop publishing"
    keep = frames_of("keep")
    assert keep == list(range(len(keep))) and len(keep) > len(keep_before), "untouched stream continues"
    chg = frames_of("chg")
    assert chg == sorted(set(chg)) and len(chg) > len(chg_before), "restarted stream numbers on"
    assert 'stream="a"' not in text and 'streamer_stream_state{state="up",stream="b"} 1.0' in text


def test_command_line_sources_and_stdout_default_and_exit_when_sources_end(
        tmp_path: Path, tiny_model_path: Path) -> None:
    """No config file: --source/--model on the command line, JSONL on stdout (the default sink),
    and the daemon drains and exits 0 by itself once its only (non-looping) file has ended."""
    clip = encode_video(tmp_path / "short.mp4", frames=12, fps=25)
    stdout = tmp_path / "stdout.jsonl"
    args = ["--source", f"short={clip}", "--model", str(tiny_model_path), "--metrics-address", "off"]
    with DaemonProcess(args, tmp_path, stdout=stdout) as daemon:
        assert daemon.wait(90) == 0, daemon.log()
    messages = read_jsonl(stdout)
    assert [m["frame"] for m in messages] == list(range(12))
    assert {m["stream"] for m in messages} == {"short"} and messages[0]["source"] == str(clip)
    assert "every source has ended" in daemon.log()


def test_startup_failures_exit_1_with_the_reason(tmp_path: Path, long_clip: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--source", f"clip={long_clip}", "--metrics-address", f"127.0.0.1:{port}"]
        with DaemonProcess(args, tmp_path) as daemon:
            assert daemon.wait(60) == 1
        assert f"startup failed: cannot serve metrics on 127.0.0.1:{port}" in daemon.log()
    missing = tmp_path / "missing.safetensors"
    args = ["--source", f"clip={long_clip}", "--model", str(missing), "--metrics-address", "off"]
    with DaemonProcess(args, tmp_path) as daemon:
        assert daemon.wait(60) == 1
    assert f"startup failed: cannot load the model {missing} on cpu" in daemon.log()
    assert "phase draining -> stopped" in daemon.log()


def test_second_sigint_forces_exit_and_shutdown_timeout_exits_1(
        tmp_path: Path, long_clip: Path, tiny_model_path: Path) -> None:
    """A deep queue of a fast file: draining takes long, so a second SIGINT cuts it short (130);
    a too short shutdown timeout ends it with exit status 1 and a log line."""
    body = f"""
[batching]
queue_size = 200
max_batch_size = 1
[[sources]]
name = "clip"
url = "{long_clip}"
realtime = false
"""
    for case, extra in (("forced", ""), ("timeout", "[shutdown]\ntimeout_s = 0.3\n")):
        out = tmp_path / f"{case}.jsonl"
        config = write_config(tmp_path / f"{case}.toml", extra + body, tiny_model_path, out)
        run_dir = tmp_path / case
        run_dir.mkdir()
        with DaemonProcess(["--config", str(config)], run_dir) as daemon:
            assert wait_for(lambda out=out: len(read_jsonl(out)) >= 3, 60), daemon.log()
            daemon.signal(signal.SIGINT)
            if case == "forced":
                time.sleep(0.2)
                daemon.signal(signal.SIGINT)
                assert daemon.wait(10) == 130, daemon.log()
                assert "second SIGINT: exiting immediately" in daemon.log()
            else:
                assert daemon.wait(10) == 1, daemon.log()
                assert "shutdown timeout (0.3 s)" in daemon.log()
        frames = [m["frame"] for m in read_jsonl(out)]
        assert len(frames) < 300 and frames == list(range(len(frames)))


def test_overload_drops_frames_instead_of_growing_latency(
        tmp_path: Path, long_clip: Path, tiny_model_path: Path) -> None:
    """A live source decoding as fast as it can (far faster than inference) for 8 s: the
    end-to-end latency stays bounded (staleness budget + one inference) and drops rise instead.
    Without dropping, latency would grow with the run time (to ~8 s here)."""
    out = tmp_path / "out.jsonl"
    config = write_config(tmp_path / "streamer.toml", f"""
[batching]
queue_size = 4
staleness_s = 0.5
max_batch_size = 1
[[sources]]
name = "flood"
url = "{long_clip}"
loop = true
realtime = false
live = true
""", tiny_model_path, out)
    with DaemonProcess(["--config", str(config)], tmp_path) as daemon:
        assert wait_for(lambda: len(read_jsonl(out)) >= 1, 60), daemon.log()
        time.sleep(8)
        text = metrics_text(daemon)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.log()
    decoded = sample(text, "streamer_frames_decoded_total", stream="flood")
    published = sample(text, "streamer_frames_published_total", stream="flood")
    dropped = (sample(text, "streamer_frames_dropped_total", stream="flood", reason="queue_full")
               + sample(text, "streamer_frames_dropped_total", stream="flood", reason="stale"))
    count = sample(text, "streamer_end_to_end_latency_seconds_count", stream="flood")
    mean = sample(text, "streamer_end_to_end_latency_seconds_sum", stream="flood") / max(count, 1)
    within_3s = sample(text, "streamer_end_to_end_latency_seconds_bucket", stream="flood", le="3.0")
    infer = (sample(text, "streamer_inference_latency_seconds_sum")
             / max(1, sample(text, "streamer_inference_latency_seconds_count")))
    print(f"\noverload: decoded {decoded:.0f}, published {published:.0f}, dropped {dropped:.0f}, "
          f"end-to-end latency mean {mean:.2f} s, inference {infer:.2f} s per frame")
    assert dropped > 10 * published > 0 and decoded >= dropped + published - 8
    assert count > 0 and within_3s == count, "every frame published within 3 s of capture"
    assert mean < 0.5 + 3 * infer + 0.5, "latency bounded by the staleness budget plus inference"
