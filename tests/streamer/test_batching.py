"""Bounded per-stream queues and fair, size-grouped batches (streamer.batching)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np
import pytest

from streamer.batching import Batcher, StreamQueue, take_fair
from streamer.config import BatchingConfig
from streamer.sources import Frame


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


def test_file_queue_put_waits_for_room_and_never_drops() -> None:
    async def scenario() -> list[int]:
        drops = Drops()
        q = StreamQueue("file", 2, drops=False, on_drop=drops)
        await q.put(frame("file", 0))
        await q.put(frame("file", 1))
        third = asyncio.ensure_future(q.put(frame("file", 2)))
        await asyncio.sleep(0.05)
        assert not third.done(), "put must wait while the queue is full"
        taken = [q.pop().index]
        await asyncio.wait_for(third, 1.0)
        taken += [q.pop().index, q.pop().index]
        assert drops.items == []
        return taken

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_closed_queue_releases_a_waiting_put_and_counts_it_as_shutdown() -> None:
    async def scenario() -> Drops:
        drops = Drops()
        q = StreamQueue("file", 1, drops=False, on_drop=drops)
        await q.put(frame("file", 0))
        blocked = asyncio.ensure_future(q.put(frame("file", 1)))
        await asyncio.sleep(0.02)
        q.close()
        await asyncio.wait_for(blocked, 1.0)
        assert len(q) == 1 and not q.finished
        q.pop()
        assert q.finished
        return drops

    assert asyncio.run(scenario()).items == [("file", 1, "shutdown")]


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
