"""Detections of batches, then published frame messages: inference worker, postprocessing, publishing.

Three stages, each off the event loop where it computes::

    Batcher.next_batch() ──► InferenceWorker.infer()      one thread per device ("infer-cpu")
                         ──► Publisher.submit()            postprocess pool ("post-N"):
                                                           streamer.messages (filter, box-local
                                                           masks, RLE/polygons)
                         ──► Publisher.run()               on the loop, in order: tracking
                                                           (streamer.tracking_pipeline), then
                                                           sink.publish()

Batches are published in the order they were inferred, so each stream's frames reach the sinks
in frame order. Tracking needs that order (a stream's tracker must see its frames one after
the other), so it runs in the ordered publish step, not on the postprocessing pool: under a
millisecond per frame (docs/performance.md), on the loop thread. ``max_batches_in_flight`` bounds the batches between inference and publishing:
when postprocessing falls behind, inference waits (and live queues drop their oldest frames).

The stages count into plain state: each stream's :class:`~streamer.stats.StreamCounts` (frames
inferred, published, dropped for ``inference_error``, instances, tracks), looked up by stream name
(``counts_of``; None for a stream removed meanwhile, whose frames are then not published), and the
pipeline's :class:`~streamer.metrics.PipelineStats` (CPU per stage, latency and batch-size
histograms). The metrics collector reads both at scrape time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from engines.runner import Detections, Runner
from streamer.batching import Batcher
from streamer.frames import Frame
from streamer.messages import FrameResult, MessageSpec, batch_results
from streamer.metrics import PipelineStats
from streamer.schema import class_name
from streamer.stats import DropReason, StageCpu, StreamCounts

if TYPE_CHECKING:
    from streamer.sinks.base import Sink
    from streamer.tracking_pipeline import StreamTrackers

log = logging.getLogger("streamer.inference")

CountsOf = Callable[[str], "StreamCounts | None"]
"""The counters of a running stream by name; None once the stream is removed."""


class InferenceWorker:
    """Runs ``runner.infer`` on one dedicated thread (a runner is not thread-safe).

    ``busy_since`` and ``last_completed`` (``time.monotonic()``) tell the systemd watchdog
    whether inference still moves. Each call is recorded in ``stats``: latency, batch size, CPU.
    """

    def __init__(self, runner: Runner, stats: PipelineStats) -> None:
        self.runner = runner
        self.stats = stats
        device = runner.info.device.replace(":", "")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{device}")
        self.busy_since: float | None = None
        self.last_completed = time.monotonic()

    async def infer(self, frames: Sequence[Frame]) -> list[Detections]:
        """Detections of ``frames`` (one per frame), computed on the inference thread."""
        loop = asyncio.get_running_loop()
        self.busy_since = time.monotonic()
        try:
            return await loop.run_in_executor(self._executor, self._infer, [f.image for f in frames])
        finally:
            self.busy_since = None
            self.last_completed = time.monotonic()

    def _infer(self, images: list[Any]) -> list[Detections]:
        start, cpu = time.perf_counter(), time.thread_time()
        dets = self.runner.infer(images)
        self.stats.inference_latency.observe(time.perf_counter() - start)
        self.stats.cpu.add("inference", time.thread_time() - cpu)
        self.stats.batch_size.observe(len(images))
        if len(dets) != len(images):
            raise RuntimeError(f"runner returned {len(dets)} detections for {len(images)} frames")
        return dets

    def close(self, timeout_s: float = 10.0) -> None:
        """Release the runner on the inference thread, after the batch in progress; stop the thread.

        The runner is closed where it ran (a CUDA runner's context and stream live there) and
        never while a batch still uses its buffers. If the batch in progress does not finish
        within ``timeout_s``, the runner is left to the process exit.
        """
        closing = self._executor.submit(self.runner.close)
        self._executor.shutdown(wait=False, cancel_futures=False)
        try:
            closing.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            log.warning("inference still busy after %.1f s; the runner is released at exit", timeout_s)
        except Exception:
            log.exception("closing the runner failed")


def _postprocess(frames: Sequence[Frame], dets: Sequence[Detections], spec: MessageSpec,
                 cpu: StageCpu, need_masks: bool = False) -> list[FrameResult]:
    start = time.thread_time()
    try:
        return batch_results(frames, dets, spec, need_masks)
    finally:
        cpu.add("postprocess", time.thread_time() - start)


class Publisher:
    """Postprocesses batches on a thread pool and publishes them to every sink, in batch order."""

    def __init__(self, sinks: Sequence[Sink], spec: MessageSpec, stats: PipelineStats,
                 workers: int, max_in_flight: int, counts_of: CountsOf,
                 trackers: StreamTrackers | None = None) -> None:
        self.sinks = list(sinks)
        self.trackers = trackers
        """Per-stream trackers, run in publish order (None: messages carry no ``track_id``)."""
        self.counts_of = counts_of
        """A stream's counters; None for a stream removed meanwhile: its frames are not published."""
        self.spec = spec
        self.stats = stats
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="post")
        self._pending: asyncio.Queue[tuple[list[Frame], asyncio.Future[Any]] | None] = (
            asyncio.Queue(max_in_flight))

    def in_flight(self) -> int:
        """Batches inferred but not yet published."""
        return self._pending.qsize()

    async def submit(self, frames: list[Frame], dets: list[Detections]) -> None:
        """Start postprocessing a batch; waits while ``max_in_flight`` batches are pending."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, _postprocess, frames, dets, self.spec, self.stats.cpu,
                                   self.trackers is not None)
        await self._pending.put((frames, fut))

    async def finish(self) -> None:
        """No more batches: :meth:`run` returns after publishing the pending ones."""
        await self._pending.put(None)

    async def run(self) -> None:
        """Publish pending batches in submission order until :meth:`finish`."""
        while (item := await self._pending.get()) is not None:
            frames, fut = item
            try:
                results: list[FrameResult] = await fut
            except Exception:
                log.exception("postprocessing a batch of %d frames failed; frames dropped", len(frames))
                count_drops(frames, self.counts_of, "inference_error")
                continue
            try:
                self._publish(frames, results)
            except Exception:  # a bug must not stop publishing: later batches still go out
                log.exception("publishing a batch of %d frames failed", len(frames))
        self._pool.shutdown(wait=False)

    def _publish(self, frames: Sequence[Frame], results: Sequence[FrameResult]) -> None:
        """Track each frame of a still running stream (CPU counted as ``track``), then hand the
        batch's messages to each sink at once and count them (``publish``): the two stages' CPU
        times are disjoint, so they add up."""
        start = time.thread_time()
        track_cpu = 0.0
        done: list[tuple[Frame, FrameResult]] = []
        for frame, result in zip(frames, results, strict=True):
            counts = self.counts_of(frame.stream)
            if counts is None:  # removed meanwhile: not published
                continue
            if self.trackers is not None:
                tracking = time.thread_time()
                tracked = self.trackers.track(frame, result)
                track_cpu += time.thread_time() - tracking
                counts.set_tracks(tracked.active, tracked.started)
            counts.count_published(self._classes(result.detections.labels), result.dropped)
            done.append((frame, result))
        for sink in self.sinks:
            sink.publish_all([result.messages[sink.encoding] for _, result in done])
        now = time.time()
        for frame, _ in done:
            self.stats.end_to_end_latency.labels(frame.stream).observe(max(0.0, now - frame.capture_time))
        if self.trackers is not None:
            self.stats.cpu.add("track", track_cpu)
        self.stats.cpu.add("publish", time.thread_time() - start - track_cpu)

    def _classes(self, labels: npt.NDArray[np.integer]) -> dict[str, int]:
        """Instances per class name of one frame's ``labels``."""
        classes: dict[str, int] = {}
        for label, n in Counter(labels.tolist()).items():
            name = class_name(self.spec.class_names, label)
            classes[name] = classes.get(name, 0) + n
        return classes


def count_drops(frames: Sequence[Frame], counts_of: CountsOf, reason: DropReason) -> None:
    """Count each frame of a still running stream as dropped for ``reason``."""
    for f in frames:
        counts = counts_of(f.stream)
        if counts is not None:
            counts.count_drop(reason)


async def run_pipeline(batcher: Batcher, worker: InferenceWorker, publisher: Publisher) -> None:
    """Batch → infer → submit until the batcher is closed and empty, then flush the publisher."""
    publishing = asyncio.create_task(publisher.run(), name="publish")
    try:
        while (batch := await batcher.next_batch()) is not None:
            try:
                dets = await worker.infer(batch)
            except Exception:
                log.exception("inference of a batch of %d frames failed; frames dropped", len(batch))
                count_drops(batch, publisher.counts_of, "inference_error")
                continue
            batch = [f.without_image() for f in batch]  # the pixels are freed here, not once published
            for f in batch:
                counts = publisher.counts_of(f.stream)
                if counts is not None:
                    counts.count_inferred()
            await publisher.submit(batch, dets)
    finally:
        await publisher.finish()
        await publishing
