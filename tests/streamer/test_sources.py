"""Decode threads of streamer.sources against real files (encoded here) and closed ports."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import threading
import time
from pathlib import Path

import pytest

from streamer.backoff import backoff_delay
from streamer.batching import LoopHandoff, StreamQueue
from streamer.config import SourceConfig
from streamer.frames import Frame
from streamer.sources import SourceWorker
from streamer.stats import StageCpu, StreamState
from tests.streamer.daemon_process import encode_video, free_port


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 frames, 25 fps, 128x96."""
    return encode_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=20, fps=25)


class Collected:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.dropped: list[tuple[int, str]] = []
        self.states: list[str] = []


async def run_worker(cfg: SourceConfig, seconds: float, queue_size: int = 2, consume_delay: float = 0.0,
                     cpu: StageCpu | None = None) -> tuple[Collected, SourceWorker]:
    """Run one SourceWorker on this loop; consume its queue for ``seconds`` or until it closes."""
    loop = asyncio.get_running_loop()
    got = Collected()
    queue = StreamQueue(cfg.name, queue_size, cfg.drops_frames, lambda f, r: got.dropped.append((f.index, r)))
    changed = asyncio.Event()
    queue.listen(changed.set)

    def record_state(stream: str, state: StreamState) -> None:
        assert stream == cfg.name
        got.states.append(state)

    worker = SourceWorker(cfg, LoopHandoff(loop, queue, threading.Event()), cpu=cpu, rng=random.Random(0),
                          on_state=record_state)
    worker.start()
    deadline = loop.time() + seconds
    while not queue.finished and loop.time() < deadline:
        if len(queue):
            got.frames.append(queue.pop())
            if consume_delay:
                await asyncio.sleep(consume_delay)
            continue
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            break
    worker.stop()
    assert await asyncio.to_thread(worker.join, 5.0), "decode thread did not stop"
    return got, worker


def test_backoff_delay_is_full_jitter_exponential_and_capped() -> None:
    """The one backoff of sources and sinks: uniform in [0, min(max, initial * 2**attempt)]."""
    rng = random.Random(1)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (10, 30.0), (100, 30.0), (5000, 30.0)]:
        delays = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # jitter over the full range
    assert 0.0 <= backoff_delay(2, 0.5, 2.0) <= 2.0  # the random module's generator by default
    with pytest.raises(ValueError, match="attempt must be >= 0, got -1"):
        backoff_delay(-1, 0.5, 30.0)


def test_file_source_delivers_every_frame_in_order_without_dropping(clip: Path) -> None:
    cfg = SourceConfig(name="clip", url=str(clip), realtime=False)
    cpu = StageCpu()
    # A slow consumer and a 2-frame queue: the decoder must wait, never drop.
    got, worker = asyncio.run(run_worker(cfg, seconds=20, queue_size=2, consume_delay=0.01, cpu=cpu))
    assert [f.index for f in got.frames] == list(range(20))
    assert got.dropped == []
    assert got.frames[0].image.shape == (96, 128, 3) and got.frames[0].image.dtype.name == "uint8"
    assert got.frames[0].source == str(clip) and got.frames[0].stream == "clip"
    pts = [f.pts for f in got.frames]
    assert pts[0] == 0.0 and pts[1] == pytest.approx(0.04)
    assert all(a is not None and b is not None and a < b for a, b in itertools.pairwise(pts))
    assert got.states == ["connecting", "up", "ended"] and worker.state == "ended"
    assert worker.thread.name == "decode-clip"
    counted = worker.counts.snapshot()
    assert (counted.decoded, counted.decode_errors, counted.reconnects) == (20, 0, 0)
    assert cpu.snapshot()["decode"] > 0


def _nice_of_threads() -> dict[int, int]:
    """Native thread id → nice value, for every thread of this process (Linux /proc)."""
    nice = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            nice[int(tid)] = int(stat[stat.rindex(")") + 2:].split()[16])
    return nice


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread nice values are read from Linux /proc")
@pytest.mark.parametrize("decode_nice", [10, 0])
def test_decode_threads_and_the_ffmpeg_threads_they_start_run_at_lower_priority(clip: Path, decode_nice: int) -> None:
    """decode_nice lowers the decode thread and FFmpeg's frame threads (inherited), nothing else."""
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    before = set(_nice_of_threads())

    async def run() -> tuple[int, dict[int, int]]:
        """The decode thread's nice value and those of the threads FFmpeg started, while decoding."""
        loop = asyncio.get_running_loop()
        queue = StreamQueue("n", 2, False, lambda f, r: None)
        cfg = SourceConfig(name="n", url=str(clip), realtime=True, loop=True, decode_nice=decode_nice)
        worker = SourceWorker(cfg, LoopHandoff(loop, queue, threading.Event()), rng=random.Random(0))
        worker.start()
        deadline = loop.time() + 10
        while not len(queue) and loop.time() < deadline:  # the decoder is open once a frame came
            await asyncio.sleep(0.01)
        now = _nice_of_threads()
        python_threads = {t.native_id for t in threading.enumerate()}
        worker.stop()
        assert await asyncio.to_thread(worker.join, 5.0)
        return now[worker.thread.native_id], {tid: n for tid, n in now.items()
                                              if tid not in before and tid not in python_threads}

    decode_thread_nice, ffmpeg_nice_of = asyncio.run(run())
    expected = min(19, base + decode_nice)
    assert decode_thread_nice == expected
    assert ffmpeg_nice_of, "frame-threaded decoding should have started FFmpeg threads"
    assert set(ffmpeg_nice_of.values()) == {expected}, ffmpeg_nice_of
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the caller is untouched


def test_realtime_file_is_paced_at_its_frame_rate(clip: Path) -> None:
    cfg = SourceConfig(name="clip", url=str(clip), realtime=True)
    start = time.monotonic()
    got, _ = asyncio.run(run_worker(cfg, seconds=10, queue_size=4))
    elapsed = time.monotonic() - start
    assert len(got.frames) == 20
    assert 0.7 <= elapsed < 3.0  # 19 frame intervals of 40 ms
    received = [f.received for f in got.frames]
    assert received[-1] - received[0] == pytest.approx(0.76, abs=0.25)


def test_looping_file_continues_numbering_across_loops(clip: Path) -> None:
    cfg = SourceConfig(name="loop", url=str(clip), realtime=False, loop=True)
    got, _worker = asyncio.run(run_worker(cfg, seconds=1.5, queue_size=4))
    indices = [f.index for f in got.frames]
    assert len(indices) > 40, "the file should have looped at least twice"
    assert indices == list(range(len(indices)))
    assert "ended" not in got.states[:-1] and got.states[:2] == ["connecting", "up"]
    assert got.states.count("connecting") == 1


def test_corrupt_file_fails_and_is_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    cfg = SourceConfig(name="bad", url=str(bad))
    with caplog.at_level(logging.WARNING, logger="streamer.sources"):
        got, worker = asyncio.run(run_worker(cfg, seconds=10))
    assert got.frames == [] and got.states == ["connecting", "failed"]
    assert worker.counts.snapshot().decode_errors == 1
    assert any("bad" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)


def test_unreachable_live_source_backs_off_never_in_a_tight_loop(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    cfg = SourceConfig.model_validate({
        "name": "gone", "url": f"rtsp://admin:s3cret@127.0.0.1:{port}/cam", "open_timeout_s": 1.0,
        "reconnect": {"initial_delay_s": 0.2, "max_delay_s": 0.8}})
    with caplog.at_level(logging.INFO, logger="streamer.sources"):
        got, worker = asyncio.run(run_worker(cfg, seconds=3.0))
    attempts = got.states.count("connecting")
    # Full jitter from 0.2 s doubling to 0.8 s: a few attempts in 3 s, never hundreds.
    assert 2 <= attempts <= 25, got.states
    assert "backoff" in got.states and "up" not in got.states
    assert worker.counts.snapshot().reconnects >= attempts - 1
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cret" not in text and "rtsp://***@127.0.0.1" in text


def test_max_attempts_marks_the_stream_failed() -> None:
    cfg = SourceConfig.model_validate({
        "name": "gone", "url": f"rtsp://127.0.0.1:{free_port()}/cam", "open_timeout_s": 1.0,
        "reconnect": {"initial_delay_s": 0.05, "max_delay_s": 0.1, "max_attempts": 3}})
    got, worker = asyncio.run(run_worker(cfg, seconds=10))
    assert got.states.count("connecting") == 3
    assert got.states[-1] == "failed" and worker.state == "failed"


def test_hwaccel_decodes_on_the_device_or_falls_back_to_software(
        clip: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``hwaccel = "cuda"``: hardware decoding where FFmpeg can create the device (a GPU
    machine), else one log line saying so and software decoding; frames either way."""
    cfg = SourceConfig(name="hw", url=str(clip), realtime=False, hwaccel="cuda")
    with caplog.at_level(logging.INFO, logger="streamer.sources"):
        got, _ = asyncio.run(run_worker(cfg, seconds=20))
    assert [f.index for f in got.frames] == list(range(20))
    assert got.frames[5].image.shape == (96, 128, 3)
    decoder_lines = [r.getMessage() for r in caplog.records if "decoding" in r.getMessage()]
    assert len(decoder_lines) in (1, 2), decoder_lines
    assert "hardware decoding (cuda)" in decoder_lines[-1] or "software decoding" in decoder_lines[-1]
