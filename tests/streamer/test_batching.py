"""Bounded per-stream queues, fair size-grouped batches (streamer.batching), and the pipeline
from batches to published messages (streamer.inference)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from streamer.batching import Batcher, LoopHandoff, StreamQueue, take_fair
from streamer.config import BatchingConfig
from streamer.encodings import MaskEncoding
from streamer.frames import Frame
from streamer.inference import InferenceWorker, Publisher, run_pipeline
from streamer.messages import MessageSpec
from streamer.metrics import PipelineStats
from streamer.sinks.base import Sink
from streamer.stats import SinkCounts, StreamCounts
from tests.streamer.daemon_process import encode_video


def frame(stream: str, index: int, size: tuple[int, int] = (96, 128), age: float = 0.0) -> Frame:
    now = time.monotonic()
    return Frame(stream, f"/videos/{stream}.mp4", index, index / 25, time.time() - age, now - age,
                 np.zeros((*size, 3), np.uint8))


class Drops:
    def __init__(self) -> None:
        self.items: list[tuple[str, int, str]] = []

    def __call__(self, f: Frame, reason: str) -> None:
        self.items.append((f.stream, f.index, reason))


def filled(name: str, n: int, drops: Drops, live: bool = True, size: tuple[int, int] = (96, 128),
           maxsize: int = 16) -> StreamQueue:
    q = StreamQueue(name, maxsize, live, drops)
    for i in range(n):
        q.offer(frame(name, i, size))
    return q


def test_live_queue_drops_oldest_when_full() -> None:
    drops = Drops()
    q = filled("cam", 5, drops, maxsize=3)
    assert [q.pop().index for _ in range(len(q))] == [2, 3, 4]
    assert drops.items == [("cam", 0, "queue_full"), ("cam", 1, "queue_full")]


def _deliver_from_a_thread(handoff: LoopHandoff, frames: list[Frame]) -> tuple[threading.Thread, list[bool]]:
    """A decode thread's part: ``handoff.deliver`` each frame in turn; what each call returned."""
    returned: list[bool] = []
    thread = threading.Thread(target=lambda: returned.extend(handoff.deliver(f) for f in frames), name="decode-test", daemon=True)
    thread.start()
    return thread, returned


def test_the_loop_is_woken_when_the_batcher_needs_frames_not_for_every_frame() -> None:
    """Decode threads wake the loop (``call_soon_threadsafe``) only when the batcher waits for
    that many frames, at an end of stream, or when ``max_batch_size`` frames wait unseen: 9 frames
    and an end of stream cost 4 wakes, not 10 (a wake costs the loop more than a frame does)."""
    drops = Drops()

    async def run() -> tuple[int, list[int], list[int], bool]:
        loop = asyncio.get_running_loop()
        wakes = 0
        crossing = loop.call_soon_threadsafe

        def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal wakes
            wakes += callback == batcher.inbox.deliver  # not asyncio.to_thread's own crossings
            return crossing(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        batcher = Batcher(BatchingConfig(max_batch_size=4, max_wait_s=5.0, queue_size=16), drops)
        queue = batcher.new_queue("cam", drops=False)
        handoff = LoopHandoff(loop, queue, threading.Event())
        frames = [frame("cam", i) for i in range(9)]

        async def from_thread(chunk: list[Frame]) -> None:
            thread, returned = _deliver_from_a_thread(handoff, chunk)
            await asyncio.to_thread(thread.join, 5)
            assert returned == [True] * len(chunk)

        taking = asyncio.ensure_future(batcher.next_batch())
        await asyncio.sleep(0.05)  # the batcher waits for a first frame
        await from_thread(frames[:1])  # wakes the waiting batcher, which takes it and waits for 3
        await asyncio.sleep(0.05)
        await from_thread(frames[1:4])  # one wake, at the third
        first = await asyncio.wait_for(taking, 2)  # long before max_wait_s
        before = wakes
        await from_thread(frames[4:8])  # nobody waits: one wake, at the 4th (the inbox's hold)
        await asyncio.sleep(0.05)
        held_woke = wakes - before
        await from_thread(frames[8:])  # held
        handoff.end()  # an end of stream always wakes; it closes the queue after that frame
        await asyncio.sleep(0.05)
        assert (held_woke, len(queue), queue.closed) == (1, 5, True)
        batcher.close()
        second, third = await batcher.next_batch(), await batcher.next_batch()
        return wakes, [f.index for f in first or []], [f.index for f in (second or []) + (third or [])], queue.finished

    wakes, first, rest, closed = asyncio.run(run())
    assert (wakes, first, rest, closed) == (4, [0, 1, 2, 3], [4, 5, 6, 7, 8], True)
    assert drops.items == []


def test_a_frame_decoded_after_draining_began_is_counted_as_dropped_at_once() -> None:
    """Once the batcher closes, every frame a decode thread still hands over reaches its closed
    queue at once and is counted (``shutdown``); none stays unseen in the inbox."""

    async def scenario() -> tuple[list[tuple[str, int, str]], int]:
        drops = Drops()
        batcher = Batcher(BatchingConfig(max_batch_size=4, queue_size=8), drops)
        queue = batcher.new_queue("cam", drops=False)
        batcher.close()
        thread, _ = _deliver_from_a_thread(LoopHandoff(asyncio.get_running_loop(), queue, threading.Event()),
                                                  [frame("cam", 0)])
        await asyncio.to_thread(thread.join, 5)
        await asyncio.sleep(0.05)
        return drops.items, batcher.pending()

    assert asyncio.run(scenario()) == ([("cam", 0, "shutdown")], 0)


def test_file_queue_handoff_waits_for_room_and_never_drops() -> None:
    """A decode thread handing 3 frames to a file queue of 2 waits after the second until the
    loop takes one; nothing is dropped and the order holds."""

    async def scenario() -> tuple[list[int], Drops]:
        drops = Drops()
        q = StreamQueue("file", 2, drops=False, on_drop=drops)
        handoff = LoopHandoff(asyncio.get_running_loop(), q, threading.Event())
        thread, returned = _deliver_from_a_thread(handoff, [frame("file", i) for i in range(3)])
        await asyncio.sleep(0.2)
        assert len(q) == 2 and thread.is_alive(), "the third frame must wait while the queue is full"
        taken = [q.pop().index]
        await asyncio.to_thread(thread.join, 2.0)
        await asyncio.sleep(0)  # the third frame's call_soon_threadsafe runs
        taken += [q.pop().index, q.pop().index]
        assert returned == [True, True, True]
        return taken, drops

    taken, drops = asyncio.run(scenario())
    assert taken == [0, 1, 2] and drops.items == []


def test_closed_queue_releases_a_waiting_decoder_and_counts_its_frame_as_shutdown() -> None:
    async def scenario() -> Drops:
        drops = Drops()
        q = StreamQueue("file", 1, drops=False, on_drop=drops)
        handoff = LoopHandoff(asyncio.get_running_loop(), q, threading.Event())
        thread, _ = _deliver_from_a_thread(handoff, [frame("file", 0), frame("file", 1)])
        await asyncio.sleep(0.2)
        assert thread.is_alive()
        q.close()
        await asyncio.to_thread(thread.join, 2.0)
        assert not thread.is_alive(), "closing the queue must let the waiting decoder go on"
        await asyncio.sleep(0)
        assert len(q) == 1 and not q.finished
        q.pop()
        assert q.finished
        return drops

    assert asyncio.run(scenario()).items == [("file", 1, "shutdown")]


def test_a_stopped_decoder_stops_waiting_for_room() -> None:
    async def scenario() -> list[bool]:
        q = StreamQueue("file", 1, drops=False, on_drop=Drops())
        stop = threading.Event()
        handoff = LoopHandoff(asyncio.get_running_loop(), q, stop)
        thread, returned = _deliver_from_a_thread(handoff, [frame("file", 0), frame("file", 1)])
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.to_thread(thread.join, 2.0)
        assert not thread.is_alive(), "a stopped decoder must not hang on a full queue"
        return returned

    assert asyncio.run(scenario()) == [True, False]


def test_take_fair_serves_one_frame_per_stream_per_round() -> None:
    drops = Drops()
    queues = [filled("a", 4, drops), filled("b", 1, drops), filled("c", 2, drops)]
    batch, last = take_fair(queues, 4, None, time.monotonic(), 1.0, drops)
    assert [(f.stream, f.index) for f in batch] == [("a", 0), ("b", 0), ("c", 0), ("a", 1)]
    assert last == 0  # stream "a" was served last: the next batch starts at "b"
    batch, _ = take_fair(queues, 8, None, time.monotonic(), 1.0, drops)
    assert [(f.stream, f.index) for f in batch] == [("a", 2), ("c", 1), ("a", 3)]


def test_take_fair_groups_by_size_and_keeps_the_other_sizes_turn() -> None:
    drops = Drops()
    small, big = (48, 64), (96, 128)
    queues = [filled("a", 2, drops, size=big), filled("b", 2, drops, size=small), filled("c", 2, drops, size=big)]
    batch, _ = take_fair(queues, 4, None, time.monotonic(), 1.0, drops)
    assert {f.size for f in batch} == {big} and [f.stream for f in batch] == ["a", "c", "a", "c"]
    batch, _ = take_fair(queues, 4, None, time.monotonic(), 1.0, drops)
    assert [f.stream for f in batch] == ["b", "b"] and batch[0].size == small


def test_stale_live_frames_are_dropped_but_file_frames_never() -> None:
    drops = Drops()
    live = StreamQueue("live", 8, True, drops)
    file = StreamQueue("file", 8, False, drops)
    for q in (live, file):
        q.offer(frame(q.name, 0, age=5.0))
        q.offer(frame(q.name, 1, age=0.0))
    batch, _ = take_fair([live, file], 8, None, time.monotonic(), 1.0, drops)
    assert sorted((f.stream, f.index) for f in batch) == [("file", 0), ("file", 1), ("live", 1)]
    assert drops.items == [("live", 0, "stale")]


def test_batcher_is_fair_to_a_slow_stream_beside_a_flooding_one() -> None:
    """Stream "flood" always has a full queue; "slow" gets a frame now and then. Every slow
    frame must go into the very next batch, and batches rotate between streams."""

    async def scenario() -> tuple[list[list[str]], Drops]:
        drops = Drops()
        batcher = Batcher(BatchingConfig(max_batch_size=2, max_wait_s=0.0, queue_size=4), drops)
        flood, slow = batcher.new_queue("flood", True), batcher.new_queue("slow", True)
        batches = []
        for i in range(40):
            for k in range(3):
                flood.offer(frame("flood", 3 * i + k))
            if i % 4 == 0:
                slow.offer(frame("slow", i))
            batch = await batcher.next_batch()
            assert batch is not None
            batches.append([f.stream for f in batch])
        return batches, drops

    batches, drops = asyncio.run(scenario())
    for i in range(0, 40, 4):
        assert "slow" in batches[i], f"slow frame waited: batch {i} = {batches[i]}"
    assert Counter(batch.count("flood") for batch in batches)[2] > 20  # flood fills the rest
    assert drops.items and all(s == "flood" and r == "queue_full" for s, _, r in drops.items)


def test_next_batch_waits_max_wait_for_a_partial_batch_and_ends_when_closed() -> None:
    async def scenario() -> None:
        drops = Drops()
        batcher = Batcher(BatchingConfig(max_batch_size=4, max_wait_s=0.2, queue_size=8), drops)
        q = batcher.new_queue("cam", True)
        q.offer(frame("cam", 0))
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, q.offer, frame("cam", 1))
        start = loop.time()
        batch = await batcher.next_batch()
        waited = loop.time() - start
        assert batch is not None and [f.index for f in batch] == [0, 1]
        assert 0.15 <= waited < 0.5  # waited for more frames, up to max_wait_s
        q.offer(frame("cam", 2))
        batcher.close()
        batch = await batcher.next_batch()
        assert batch is not None and [f.index for f in batch] == [2]  # queued frames still served
        assert await asyncio.wait_for(batcher.next_batch(), 1.0) is None

    asyncio.run(scenario())


def test_removed_stream_drops_its_queue_as_shutdown() -> None:
    async def scenario() -> Drops:
        drops = Drops()
        batcher = Batcher(BatchingConfig(), drops)
        q = batcher.new_queue("gone", True)
        q.offer(frame("gone", 0))
        q.offer(frame("gone", 1))
        batcher.remove_queue("gone")
        assert batcher.pending() == 0 and "gone" not in batcher.queues
        return drops

    assert asyncio.run(scenario()).items == [("gone", 0, "shutdown"), ("gone", 1, "shutdown")]


@pytest.mark.parametrize("max_batch", [1, 3])
def test_batch_never_exceeds_max_size(max_batch: int) -> None:
    drops = Drops()
    queues = [filled(n, 5, drops) for n in "abc"]
    batch, _ = take_fair(queues, max_batch, None, time.monotonic(), 1.0, drops)
    assert len(batch) == max_batch


class RecordingSink(Sink):
    """A sink that keeps what it is given (the daemon's side of the Sink interface)."""

    def __init__(self, encoding: MaskEncoding) -> None:
        self.name, self.encoding = f"memory:{encoding}", encoding
        self.stats = SinkCounts()
        self.messages: list[dict[str, Any]] = []

    async def start(self) -> None:
        pass

    def publish(self, msg: dict[str, Any]) -> None:
        self.messages.append(msg)

    async def close(self, timeout: float) -> None:
        pass

    def depth(self) -> int:
        return 0


def test_pipeline_publishes_each_stream_in_frame_order(tiny_model_path: Path) -> None:
    """Batcher → inference thread → postprocess pool (3 threads) → sinks: every frame of three
    streams published once, in frame order per stream, one message per sink encoding."""
    from engines.loading import load_runner

    runner = load_runner(tiny_model_path)
    clip = encode_video(tiny_model_path.parent / "pipeline.mp4", frames=1)
    with av.open(str(clip)) as container:
        image = next(container.decode(video=0)).to_ndarray(format="rgb24")

    counts = {name: StreamCounts() for name in "abc"}
    stats = PipelineStats()

    async def scenario() -> tuple[RecordingSink, RecordingSink]:
        batcher = Batcher(BatchingConfig(max_batch_size=4, queue_size=8), Drops())
        sinks = (RecordingSink("rle"), RecordingSink("none"))
        spec = MessageSpec(runner.info.class_names, frozenset({"rle", "none"}), 0.3, 0.5)
        publisher = Publisher(sinks, spec, stats, workers=3, max_in_flight=2, counts_of=counts.get)
        pipeline = asyncio.create_task(run_pipeline(batcher, InferenceWorker(runner, stats), publisher))
        queues = [batcher.new_queue(name, drops=False) for name in ("a", "b", "c")]
        for i in range(6):
            for q in queues[: 1 + i % 3]:
                q.offer(replace(frame(q.name, i), image=image))  # 6 at most: within queue_size
        batcher.close()
        await asyncio.wait_for(pipeline, 120)
        return sinks

    rle, plain = asyncio.run(scenario())
    sent = [(m["stream"], m["frame"]) for m in rle.messages]
    assert sorted(sent) == sorted((s, i) for i in range(6) for s in "abc"[: 1 + i % 3])
    for stream in "abc":
        indices = [i for s, i in sent if s == stream]
        assert indices == sorted(indices)
    assert [(m["stream"], m["frame"]) for m in plain.messages] == sent
    with_masks = [inst for m in rle.messages for inst in m["instances"]]
    assert with_masks and all("mask" in inst for inst in with_masks)
    assert all("mask" not in inst for m in plain.messages for inst in m["instances"])
    assert all(inst["score"] >= 0.3 for inst in with_masks)
    assert rle.messages[0]["width"] == 128 and "capture_time" in rle.messages[0]
    a = counts["a"].snapshot()
    assert (a.inferred, a.published, a.dropped_total) == (6, 6, 0)
    assert sum(n for n, _ in a.instances.values()) == sum(len(m["instances"]) for m in rle.messages if m["stream"] == "a")
    assert {stage for stage, seconds in stats.cpu.snapshot().items() if seconds > 0} >= {"inference", "postprocess"}
    assert stats.batch_size.collect()[0].samples[-2].value == len(sent)  # _sum: one per frame


class FailingRunner:
    """A runner whose every batch fails."""

    info = type("Info", (), {"device": "cpu"})()

    def infer(self, images: list[Any]) -> list[Any]:
        raise RuntimeError("out of memory")


def test_failed_inference_counts_its_frames_as_dropped() -> None:
    """Frames of a failed batch are dropped for ``inference_error`` in their stream's counters
    (a removed stream's frames are not counted); the pipeline goes on."""
    counts = {"a": StreamCounts()}
    stats = PipelineStats()

    async def scenario() -> RecordingSink:
        batcher = Batcher(BatchingConfig(max_batch_size=2, queue_size=8), Drops())
        sink = RecordingSink("rle")
        spec = MessageSpec(("__background__", "thing"), frozenset({"rle"}), 0.3, 0.5)
        publisher = Publisher([sink], spec, stats, workers=1, max_in_flight=2, counts_of=counts.get)
        pipeline = asyncio.create_task(
            run_pipeline(batcher, InferenceWorker(FailingRunner(), stats), publisher))  # type: ignore[arg-type]
        for name in ("a", "gone"):
            queue = batcher.new_queue(name, drops=False)
            for i in range(3):
                queue.offer(frame(name, i))
        batcher.close()
        await asyncio.wait_for(pipeline, 30)
        return sink

    sink = asyncio.run(scenario())
    a = counts["a"].snapshot()
    assert sink.messages == [] and (a.inferred, a.published) == (0, 0)
    assert a.dropped == {"queue_full": 0, "stale": 0, "shutdown": 0, "inference_error": 3}
