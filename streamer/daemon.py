"""The ``streamer run`` daemon: phases, signals, stream supervision, systemd notifications.

Phases, logged on each transition::

    startup   metrics/HTTP endpoint, sinks, model (loaded off the loop), sources started → READY=1
    running   supervision tick every 0.5 s: loop heartbeat for /healthz, STATUS= line,
              WATCHDOG=1 while the pipeline moves, SIGHUP reloads
    draining  SIGTERM/SIGINT (or every source ended): STOPPING=1, sources stopped, queued
              frames and batches in flight finished, sinks flushed — all within
              ``[shutdown] timeout_s``, else exit 1
    stopped   exit status: 0 clean, 1 timeout/startup failure/every source failed, 130 forced

Signal handlers only set flags; the supervision tick acts on them. A second SIGINT forces an
immediate exit. SIGHUP re-reads the config file's ``[[sources]]``: added streams start, removed
ones stop (and lose their metrics), changed ones restart (frame numbering continues), others are
untouched; a removed stream's tracker is dropped, a changed one starts a new tracker at its first
new frame (track ids continue, never reused). Other sections need a restart. The daemon exits by
itself (draining first) once every source has ended or failed, e.g. after a non-looping file.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

import streamer
from engines.runner import Runner
from streamer.batching import Batcher, LoopHandoff, StreamQueue
from streamer.config import (
    ConfigError,
    Overrides,
    SourceConfig,
    StreamerConfig,
    load_config,
    parse_host_port,
    with_defaults,
)
from streamer.event_loop import loop_name
from streamer.frames import Frame
from streamer.heap import TRIM_INTERVAL_S, release_free_heap
from streamer.http import HealthState, HttpServer, start_http_server
from streamer.inference import InferenceWorker, Publisher, run_pipeline
from streamer.messages import MessageSpec
from streamer.metrics import PipelineStats, StreamerCollector
from streamer.sdnotify import Notifier, WatchdogPinger, pipeline_alive, watchdog_period
from streamer.sinks import Sink, create_sink
from streamer.sources import SourceWorker
from streamer.stats import DropReason, StreamCounts

if TYPE_CHECKING:
    from streamer.tracking_pipeline import StreamTrackers

log = logging.getLogger("streamer.daemon")

TICK_S = 0.5
EXIT_FORCED = 130


class Phase(enum.Enum):
    STARTUP = "startup"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class StartupError(Exception):
    """The daemon cannot start (model, metrics address); the message says what to fix."""


@dataclass
class Stream:
    """A running source: its config, its queue and its decode thread (which holds its counters)."""

    cfg: SourceConfig
    queue: StreamQueue
    worker: SourceWorker


class Daemon:
    """One ``streamer run`` process. ``await Daemon(cfg).run()`` returns the exit status."""

    def __init__(self, cfg: StreamerConfig, config_path: Path | None = None,
                 overrides: Overrides | None = None, registry: CollectorRegistry | None = None,
                 runner: Runner | None = None) -> None:
        self.cfg = with_defaults(cfg)
        self._given_runner = runner
        """A runner to use instead of loading ``[inference] model`` (benchmarks)."""
        self.config_path = config_path
        self.overrides = overrides
        self.registry = registry or CollectorRegistry()
        self.pipeline = PipelineStats()
        self.collector = StreamerCollector(self.registry, self.pipeline)
        self.phase = Phase.STARTUP
        self.forced = False
        """True after a second SIGINT: the caller must exit at once (``os._exit``)."""
        self.streams: dict[str, Stream] = {}
        self.sinks: list[Sink] = []
        self.notifier = Notifier.from_env()
        self.health = HealthState(model_loaded=False, streams_up=self.streams_up,
                                  loop_heartbeat=time.monotonic())
        self._http: HttpServer | None = None
        self._worker: InferenceWorker | None = None
        self._publisher: Publisher | None = None
        self._trackers: StreamTrackers | None = None
        self._batcher = Batcher(self.cfg.batching, self._count_drop)
        self._pipeline: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop_requested = False
        self._reload_requested = False
        self._interrupts = 0
        self._watchdog = watchdog_period()
        self._pinger = (WatchdogPinger(self.notifier, self._watchdog)
                        if self.notifier is not None and self._watchdog is not None else None)

    # -- phases ---------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run all phases; the exit status (see the module docstring)."""
        loop = asyncio.get_running_loop()
        self._install_signal_handlers(loop)
        log.info("streamer %s starting: %d sources, %d sinks, model %s on %s, %s event loop", streamer.__version__,
                 len(self.cfg.sources), len(self.cfg.sinks), self.cfg.inference.model or "(demo)",
                 self.cfg.inference.device, loop_name(loop))
        code = 0
        startup = asyncio.ensure_future(self._startup())
        if await self._until(startup, float("inf")):
            try:
                startup.result()
            except StartupError as err:
                log.error("startup failed: %s", err)
                code = 1
            else:
                self._set_phase(Phase.RUNNING)
                code = await self._running()
        if not self.forced:
            self._set_phase(Phase.DRAINING)
            code = max(code, await self._drain())
        self._set_phase(Phase.STOPPED)
        self._close_resources()
        return EXIT_FORCED if self.forced else code

    async def _startup(self) -> None:
        m = self.cfg.metrics
        if m.enabled:
            host, port = parse_host_port(m.address)
            try:
                self._http = start_http_server(host, port, self.registry, self.health)
            except OSError as err:
                raise StartupError(f"{err.strerror or err} (--metrics-address overrides it; off disables it)") from err
        for sink_cfg in self.cfg.sinks:
            sink = create_sink(sink_cfg)
            self.collector.watch_sink(sink)
            await sink.start()
            self.sinks.append(sink)
        inf = self.cfg.inference
        runner = self._given_runner
        if runner is None:
            runner = await asyncio.to_thread(_load_runner, inf.model, inf.device, inf.backend, inf.mask_threshold)
        info = runner.info
        log.info("model %s loaded (%s on %s)", info.name, info.backend, info.device)
        self.collector.set_info(streamer.__version__, info.backend, info.device, info.name)
        self._worker = InferenceWorker(runner, self.pipeline)
        spec = MessageSpec(info.class_names, frozenset(s.encoding for s in self.sinks),
                           inf.score_threshold, inf.mask_threshold, box=self.cfg.box_name)
        if self.cfg.tracking.enabled:
            from streamer.tracking_pipeline import StreamTrackers

            self._trackers = StreamTrackers(self.cfg.tracking, self._frame_time)
        self._publisher = Publisher(self.sinks, spec, self.pipeline, inf.postprocess_workers,
                                    inf.max_batches_in_flight, counts_of=self._counts_of,
                                    trackers=self._trackers)
        self.collector.watch_queue("publish", self._publisher.in_flight)
        self.collector.watch_queue("frames", self._batcher.pending)
        self._pipeline = asyncio.create_task(
            run_pipeline(self._batcher, self._worker, self._publisher), name="pipeline")
        for source in self.cfg.sources:
            self._start_stream(source)
        self.health.model_loaded = True
        if self.notifier:
            self.notifier.ready(self.status_line())

    async def _running(self) -> int:
        next_status = next_trim = 0.0
        while True:
            now = time.monotonic()
            self.health.loop_heartbeat = now
            if self.forced or self._stop_requested:
                return 0
            if self._reload_requested:
                self._reload_requested = False
                await self._reload()
            if self._pipeline is not None and self._pipeline.done():
                log.error("the inference pipeline stopped unexpectedly: %r", self._pipeline.exception())
                return 1
            if now >= next_trim:
                release_free_heap()
                next_trim = now + TRIM_INTERVAL_S
            if self.notifier and now >= next_status:
                self.notifier.status(self.status_line())
                next_status = now + self.cfg.systemd.status_interval_s
            if self._pinger is not None:
                self._pinger.tick(now, self._pipeline_alive, self._worker_last_completed)
            if self.streams and all(s.queue.closed for s in self.streams.values()):  # end sentinels arrived
                failed = sorted(n for n, s in self.streams.items() if s.worker.state == "failed")
                log.info("every source has ended%s", f" (failed: {', '.join(failed)})" if failed else "")
                return 1 if failed else 0
            await self._sleep(min(TICK_S, self._watchdog / 4) if self._watchdog else TICK_S)

    async def _drain(self) -> int:
        """Stop sources, finish queued frames and batches, flush sinks; 1 if the timeout ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.shutdown.timeout_s
        if self.notifier:
            self.notifier.stopping(f"draining: {self.status_line()}")
        for stream in self.streams.values():
            stream.worker.stop()
        self._batcher.close()
        waiting = (self._batcher.pending(), self._publisher.in_flight() if self._publisher else 0,
                   self._frame_totals()[0])
        code = 0
        pipeline = self._pipeline
        if pipeline is not None and not await self._until(asyncio.shield(pipeline), deadline - loop.time()):
            if self.forced:
                return EXIT_FORCED
            log.error("shutdown timeout (%.1f s): %d frames and %d batches not published",
                      self.cfg.shutdown.timeout_s, self._batcher.pending(),
                      self._publisher.in_flight() if self._publisher else 0)
            code = 1
        closing = asyncio.gather(*(s.close(max(0.0, deadline - loop.time())) for s in self.sinks))
        if not await self._until(closing, deadline - loop.time() + 1.0):
            if self.forced:
                return EXIT_FORCED
            log.error("shutdown timeout (%.1f s): sinks not flushed", self.cfg.shutdown.timeout_s)
            code = 1
        for stream in self.streams.values():
            await asyncio.to_thread(stream.worker.join, max(0.0, min(1.0, deadline - loop.time())))
        log.info("drained: %s", self._drain_summary(*waiting))
        return code

    def _drain_summary(self, frames: int, batches: int, published_before: int) -> str:
        """What draining handled and what each sink delivered in all, for the ``drained:`` line."""
        published = self._frame_totals()[0]
        counted = [(s.name, s.stats.snapshot()) for s in self.sinks]
        sinks = "; ".join(f"sink {name}: {c.sent} sent, {c.dropped} dropped" for name, c in counted)
        return (f"{frames} queued frame(s) and {batches} batch(es) in flight at the start; "
                f"{published - published_before} frame(s) published while draining, {published} in all"
                f"{'; ' + sinks if sinks else ''}")

    def _close_resources(self) -> None:
        if self._worker is not None:
            self._worker.close()
        if self._http is not None:
            self._http.close()
        if self.notifier:
            self.notifier.close()

    # -- streams --------------------------------------------------------------------------------

    def _start_stream(self, cfg: SourceConfig, start_index: int = 0, counts: StreamCounts | None = None) -> None:
        """Start a stream's decode thread; ``counts``: the counters of the stream it replaces."""
        loop = asyncio.get_running_loop()
        queue = self._batcher.new_queue(cfg.name, cfg.drops_frames)
        stop = threading.Event()
        queue.listen(lambda: self._on_queue_event(queue))
        worker = SourceWorker(cfg, LoopHandoff(loop, queue, stop), counts=counts, cpu=self.pipeline.cpu,
                              start_index=start_index)
        self.streams[cfg.name] = Stream(cfg, queue, worker)
        self.collector.watch_stream(cfg.name, worker)
        self.collector.watch_queue(f"stream:{cfg.name}", queue.__len__)
        worker.start()

    def _stop_stream(self, name: str, forget: bool) -> SourceWorker:
        """Stop a stream (its thread ends in the background; ``forget``: its series go too); its worker."""
        stream = self.streams[name]
        stream.worker.stop()
        self._batcher.remove_queue(name)  # queued frames count as dropped ("shutdown")
        del self.streams[name]
        if forget:
            self.collector.forget_stream(name)
        return stream.worker

    async def _reload(self) -> None:
        if self.config_path is None:
            log.warning("SIGHUP: no --config file to reload; ignored")
            return
        try:
            new = with_defaults(await asyncio.to_thread(load_config, self.config_path, self.overrides))
        except ConfigError as err:
            for problem in str(err).splitlines():  # one log line per problem
                log.error("SIGHUP: the config file is invalid; keeping the running config: %s", problem)
            return
        old = {s.name: s for s in self.cfg.sources}
        wanted = {s.name: s for s in new.sources}
        removed = [n for n in old if n not in wanted]
        added = [n for n in wanted if n not in old]
        changed = [n for n in wanted if n in old and wanted[n] != old[n]]
        for name in removed:
            self._stop_stream(name, forget=True)
            if self._trackers is not None:
                self._trackers.drop(name)
        for name in changed:
            stopped = self._stop_stream(name, forget=False)
            self._start_stream(wanted[name], start_index=stopped.next_index, counts=stopped.counts)
            if self._trackers is not None:
                self._trackers.restart(name, stopped.next_index)
        for name in added:
            self._start_stream(wanted[name])
        ignored = [k for k in StreamerConfig.model_fields
                   if k != "sources" and getattr(new, k) != getattr(self.cfg, k)]
        if ignored:
            log.warning("SIGHUP: changes to %s take effect after a restart", ", ".join(ignored))
        self.cfg = self.cfg.model_copy(update={"sources": new.sources})
        log.info("SIGHUP: streams reloaded: added %s, removed %s, restarted %s, unchanged %d",
                 added or "none", removed or "none", changed or "none",
                 len(wanted) - len(added) - len(changed))

    # -- status ---------------------------------------------------------------------------------

    def streams_up(self) -> int:
        return sum(1 for s in self.streams.values() if s.worker.state == "up")

    def status_line(self) -> str:
        """One-line summary for ``STATUS=``, e.g. ``running; 2/3 streams up (1 backoff); 5120
        frames published, 12 dropped, 3 queued``.

        Published and dropped frames are summed over the running streams' counters, the ones
        ``/metrics`` reads (``streamer_frames_published_total``, ``streamer_frames_dropped_total``).
        """
        others = Counter(s.worker.state or "new" for s in self.streams.values() if s.worker.state != "up")
        detail = f" ({', '.join(f'{n} {state}' for state, n in sorted(others.items()))})" if others else ""
        published, dropped = self._frame_totals()
        return (f"{self.phase.value}; {self.streams_up()}/{len(self.streams)} streams up{detail}; "
                f"{published} frames published, {dropped} dropped, {self._batcher.pending()} queued")

    def _frame_totals(self) -> tuple[int, int]:
        """Frames published and dropped by the running streams (the sums of their series)."""
        counts = [s.worker.counts.snapshot() for s in self.streams.values()]
        return sum(c.published for c in counts), sum(c.dropped_total for c in counts)

    def _counts_of(self, name: str) -> StreamCounts | None:
        stream = self.streams.get(name)
        return stream.worker.counts if stream is not None else None

    def _frame_time(self, frame: Frame) -> float | None:
        """Tracking time of a frame (s): pts for file sources (a loop restarts it: tracks end),
        capture time for live streams (a reconnect longer than ``max_age_s`` ends tracks)."""
        stream = self.streams.get(frame.stream)
        return frame.pts if stream is not None and stream.cfg.kind == "file" else frame.capture_time

    def _count_drop(self, frame: Frame, reason: DropReason) -> None:
        counts = self._counts_of(frame.stream)
        if counts is not None:
            counts.count_drop(reason)

    def _pipeline_alive(self, now: float) -> bool:
        w = self._worker
        if w is None or self._watchdog is None:
            return True
        pending = self._batcher.pending() + (self._publisher.in_flight() if self._publisher else 0)
        return pipeline_alive(now, w.last_completed, w.busy_since, pending, self._watchdog)

    def _worker_last_completed(self) -> float:
        return self._worker.last_completed if self._worker else time.monotonic()

    def _set_phase(self, phase: Phase) -> None:
        log.info("phase %s -> %s", self.phase.value, phase.value)
        self.phase = phase

    # -- signals --------------------------------------------------------------------------------

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal, signal.SIGINT)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)

    def _on_stop_signal(self, signum: int) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts >= 2:
                self.forced = True
        if not self._stop_requested:
            log.info("%s: shutting down (timeout %.1f s)%s", signal.Signals(signum).name,
                     self.cfg.shutdown.timeout_s, "; interrupt again to force" if signum == signal.SIGINT else "")
        elif self.forced:
            log.warning("second SIGINT: exiting immediately")
        self._stop_requested = True
        self._wake.set()

    def _on_queue_event(self, queue: StreamQueue) -> None:
        """On the loop, for each frame and for the end-of-stream sentinel of a stream's queue: the
        sentinel wakes the supervision tick at once (the last stream to end starts draining now, not
        up to a tick later). The sentinel crosses after the stream's last frame, so every frame is
        queued by then; the worker's own ``state`` turns ``ended`` on its thread, before its last
        frames may have reached the loop, and must not start draining (their frames would be
        dropped as ``shutdown``)."""
        if queue.closed:
            self._wake.set()

    def _on_reload_signal(self) -> None:
        self._reload_requested = True
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _until(self, aw: Awaitable[Any], timeout: float) -> bool:
        """Wait for ``aw`` at most ``timeout`` s; False on timeout or a forced exit."""
        fut = asyncio.ensure_future(aw)
        deadline = time.monotonic() + max(0.0, timeout)
        while not fut.done() and not self.forced and time.monotonic() < deadline:
            self.health.loop_heartbeat = time.monotonic()
            await asyncio.wait({fut}, timeout=min(TICK_S, max(0.0, deadline - time.monotonic())))
        return fut.done() and not self.forced


def _load_runner(model: str | None, device: str, backend: str | None, mask_threshold: float) -> Runner:
    """The runner; on CUDA it pastes masks on the GPU at the publish threshold."""
    from engines.loading import load_runner

    try:
        return load_runner(model, device=device, backend=backend, paste_threshold=mask_threshold)
    except (OSError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split())  # one log line, whatever the loader's message
        raise StartupError(f"cannot load the model {model or '(demo)'} on {device}: {reason}") from err
