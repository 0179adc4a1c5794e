"""Tracking in the daemon's publisher: frame order per stream despite the postprocessing pool,
metrics, and the reload rules (removed stream: tracker dropped; changed stream: a new tracker)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from engines.runner import Detections
from streamer.frames import Frame
from streamer.inference import Publisher
from streamer.messages import MessageSpec
from streamer.metrics import PipelineStats, StreamerCollector
from streamer.stats import StreamCounts
from streamer.tracking_config import TrackingConfig
from streamer.tracking_pipeline import StreamTrackers, capture_time

H, W = 96, 128


class ListSink:
    """Collects published messages (the ``Sink`` surface the publisher uses)."""

    encoding = "rle"

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def publish(self, msg: dict[str, Any]) -> None:
        self.messages.append(msg)

    def publish_all(self, msgs: list[dict[str, Any]]) -> None:
        self.messages.extend(msgs)


def frame(stream: str, index: int) -> Frame:
    return Frame(stream, stream, index, None, 1000.0 + index / 25, 0.0, np.zeros((H, W, 3), np.uint8))


def detections(index: int) -> Detections:
    """One object moving right 1 px per frame, and (frames 5..) a second one, still."""
    boxes = [[10 + index, 10, 40 + index, 40]] + ([[80, 50, 110, 80]] if index >= 5 else [])
    k = len(boxes)
    return Detections(np.array(boxes, np.float32), np.linspace(0.9, 0.8, k).astype(np.float32),
                      np.ones(k, np.int64), np.ones((k, 28, 28), np.float32), (H, W))


def run(batches: list[list[Frame]], trackers: StreamTrackers, stats: PipelineStats,
        counts: dict[str, StreamCounts], between: dict[int, Any] | None = None) -> list[dict[str, Any]]:
    """Publish ``batches`` through a 4-worker publisher; ``between[i]()`` runs before batch i."""
    sink = ListSink()

    async def main() -> None:
        spec = MessageSpec(("__background__", "thing"), frozenset({"rle"}), 0.5)
        pub = Publisher([sink], spec, stats, workers=4, max_in_flight=8,  # type: ignore[list-item]
                        counts_of=counts.get, trackers=trackers)
        publishing = asyncio.create_task(pub.run())
        for i, batch in enumerate(batches):
            if between and i in between:
                await asyncio.sleep(0.05)  # let the batches before it publish
                between[i]()
            await pub.submit(batch, [detections(f.index) for f in batch])
        await pub.finish()
        await publishing

    asyncio.run(main())
    return sink.messages


def ids(messages: list[dict[str, Any]], stream: str) -> list[list[int | None]]:
    return [[inst["track_id"] for inst in m["instances"]] for m in messages if m["stream"] == stream]


def test_each_stream_tracked_in_frame_order_with_metrics() -> None:
    collector = StreamerCollector(reg := CollectorRegistry())
    counts = {name: StreamCounts() for name in ("a", "b")}
    for name, c in counts.items():
        collector.watch_stream(name, SimpleNamespace(counts=c, state="up"))
    trackers = StreamTrackers(TrackingConfig(min_hits=2), capture_time)
    batches = [[frame("a", i), frame("b", i)] for i in range(20)]
    messages = run(batches, trackers, collector.pipeline, counts)
    for stream in ("a", "b"):
        got = ids(messages, stream)
        assert [m["frame"] for m in messages if m["stream"] == stream] == list(range(20))
        assert got[0] == [None] and all(g == [1] for g in got[1:5])
        assert got[5] == [1, None] and all(g == [1, 2] for g in got[6:])
        assert reg.get_sample_value("streamer_tracks_started_total", {"stream": stream}) == 2
        assert reg.get_sample_value("streamer_tracks_active", {"stream": stream}) == 2
    assert (reg.get_sample_value("streamer_stage_cpu_seconds_total", {"stage": "track"}) or 0) > 0


def test_reload_drops_a_removed_streams_tracker_and_restarts_a_changed_one() -> None:
    counts = {name: StreamCounts() for name in ("chg", "gone")}
    trackers = StreamTrackers(TrackingConfig(min_hits=1), capture_time)
    batches = [[frame("chg", i), frame("gone", i)] for i in range(10)]
    batches += [[frame("chg", i)] for i in range(10, 20)]  # a changed source numbers on
    batches += [[frame("gone", 0)]]                         # a stream of that name added back later

    def reload() -> None:
        trackers.restart("chg", 10)
        trackers.drop("gone")
        assert "gone" not in trackers

    messages = run(batches, trackers, PipelineStats(), counts, between={10: reload})
    chg = ids(messages, "chg")
    assert all(g[0] == 1 for g in chg[:10]) and all(g[0] == 3 for g in chg[10:])  # new tracker, new ids
    assert chg[5:10] == [[1, 2]] * 5
    assert ids(messages, "gone")[-1] == [3]  # ids of a dropped stream name are never reused


class SlowTrackers(StreamTrackers):
    """Real trackers that also burn 20 ms of CPU per frame, so the track stage dominates."""

    def track(self, frame: Frame, result: Any) -> Any:
        start = time.thread_time()
        while time.thread_time() - start < 0.02:
            pass
        return super().track(frame, result)


def test_track_and_publish_cpu_are_disjoint() -> None:
    """``streamer_stage_cpu_seconds_total`` stages add up: tracking time is counted as ``track``
    only, not again in ``publish`` (which once timed the whole publish step, tracking included)."""
    stats = PipelineStats()
    counts = {"a": StreamCounts()}
    run([[frame("a", i)] for i in range(10)], SlowTrackers(TrackingConfig(), capture_time), stats, counts)
    cpu = stats.cpu.snapshot()
    assert cpu["track"] >= 0.2
    assert cpu["publish"] < 0.1 * cpu["track"], cpu


class FailingTrackers(StreamTrackers):
    """Real trackers that raise on one frame (a bug in a stage after postprocessing)."""

    def track(self, frame: Frame, result: Any) -> Any:
        if frame.index == 3:
            raise RuntimeError("tracker bug")
        return super().track(frame, result)


def test_an_error_while_publishing_a_batch_loses_that_batch_only() -> None:
    """A stage that raises while a batch is published (here the tracker, on frame 3) costs that
    batch; the publisher goes on with the next ones instead of stopping the pipeline."""
    counts = {"a": StreamCounts()}
    messages = run([[frame("a", i)] for i in range(8)], FailingTrackers(TrackingConfig(), capture_time),
                   PipelineStats(), counts)
    assert [m["frame"] for m in messages] == [0, 1, 2, 4, 5, 6, 7]
