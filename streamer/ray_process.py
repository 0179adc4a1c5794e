"""``streamer process --ray ADDRESS``: the same job as ``streamer process``, run across a Ray cluster.

::

    streamer process archive/*.mp4 --ray auto --device cuda --out results/ --resume

The driver (this module) connects to the cluster, starts one :class:`~streamer.ray_worker.SegmentWorker`
actor per GPU (``--device cuda``) or per CPU, has the workers plan every input into keyframe-cut
time segments (:mod:`streamer.segments`), hands segments to idle workers and writes each input's
frames in frame order, exactly once, when all its segments are back. Frames stay on the workers;
only compressed results travel. Ray restarts a killed worker process (``max_restarts``) and
retries its segment (``max_task_retries``); a segment whose retries are spent is submitted again
to another worker (:data:`RESUBMITS` times) before its input is reported as failed.

Tracking (on by default) runs on the driver, per input, over the merged results in frame order, so
track ids are those of the local run. Output: ``--out FILE`` (or ``-``) as locally, written to a
temporary file and renamed at the end; ``--out DIR/`` writes ``DIR/<stem>.jsonl`` per input,
each renamed into place when complete, which ``--resume`` skips on a re-run.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streamer.offline import InputFailure, ProcessOptions
from streamer.progress import progress
from streamer.ray_output import OutputSink, RunStats, emit_lines
from streamer.ray_worker import SegmentOutput, SegmentWorker, load_output
from streamer.segments import InputPlan, Segment, whole_plan

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
"""Seconds to wait for the cluster's GCS port before calling the address unreachable."""
RESUBMITS = 2
"""Extra submissions of a segment whose worker died more often than Ray retries it."""
MAX_TASK_RETRIES = 3
"""Ray's retries of a segment on a restarted worker (``max_task_retries``)."""
STALL_S = 30.0
"""A worker silent (no ping answer) this long while running a segment loses the segment."""
WORKER_START_S = 120.0
"""Seconds the workers get to start and load the model."""
ALIVE_WINDOW_S = 3.0
"""A worker that answered a ping within this many seconds counts as alive."""
EXTRA = "pip install 'maskrcnn-streamer[ray]'"


class RayUsageError(Exception):
    """A problem found before any work starts (exit status 2)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--ray`` options of ``streamer process``."""
    g = p.add_argument_group("Ray cluster (docs/cli.md, 'streamer process --ray')")
    g.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run across a Ray cluster: HOST:PORT of its head, 'auto' (the cluster this "
                        "machine belongs to) or 'local' (start one here)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="--ray: worker actors (default: one per GPU for --device cuda, per CPU otherwise)")
    g.add_argument("--segment-frames", type=int, default=3000, metavar="N",
                   help="--ray: cut videos of at least 2N frames at keyframes into segments of >= N "
                        "frames (default: 3000)")
    g.add_argument("--resume", action="store_true",
                   help="--ray with --out DIR/: skip inputs whose DIR/<stem>.jsonl already exists")


def ray_only_misuse(args: argparse.Namespace) -> str | None:
    """Why the options need ``--ray`` (a usage error), or None."""
    if args.ray is not None:
        return None
    used = [o for o, v in (("--resume", args.resume), ("--workers", args.workers is not None)) if v]
    return f"{', '.join(used)} needs --ray ADDRESS" if used else None


def run_ray(args: argparse.Namespace, options: ProcessOptions) -> int:
    """``streamer process --ray``: 0 all inputs done, 1 an input failed, 2 usage/cluster errors."""
    parser: argparse.ArgumentParser = args.parser
    if args.annotate is not None:
        parser.error("--annotate is not available with --ray (frames stay on the workers); "
                     "run annotated inputs locally")
    if (args.workers is not None and args.workers < 1) or args.segment_frames < 1:
        parser.error("--workers and --segment-frames must be >= 1")
    try:
        sink = OutputSink.create(args.out, args.inputs, args.resume)
    except ValueError as err:
        parser.error(str(err))
    try:
        import ray
    except ImportError:
        sink.abort()
        print(f"error: --ray needs Ray, which is not installed: {EXTRA}", file=sys.stderr)
        return 2
    try:
        workers = _connect(ray, args.ray, args.device, args.workers)
    except RayUsageError as err:
        sink.abort()
        print(f"error: --ray {args.ray}: {err}", file=sys.stderr, flush=True)
        return 2
    todo = [p for p in args.inputs if not sink.complete(p)]
    for p in args.inputs:
        if p not in todo:
            logger.info("%s: output exists, skipped (--resume)", p)
    if not todo:
        ray.shutdown()
        return 0
    try:
        actor_cls = ray.remote(SegmentWorker).options(
            num_cpus=0 if args.device.startswith("cuda") else 1,
            num_gpus=1 if args.device.startswith("cuda") else 0,
            max_restarts=-1, max_task_retries=MAX_TASK_RETRIES, max_concurrency=2)
        device = "cuda" if args.device.startswith("cuda") else args.device  # Ray sets CUDA_VISIBLE_DEVICES
        actors = [actor_cls.remote(args.model, device, args.backend, options) for _ in range(workers)]
        job = _Job(ray, actors, options, sink, args.segment_frames)
        failures = job.run(todo)
    except RuntimeError as err:
        sink.abort()
        print(f"error: --ray {args.ray}: {err}", file=sys.stderr, flush=True)
        return 1
    except OSError as err:  # writing --out failed (disk full, ...)
        sink.abort()
        print(f"error: cannot write the output: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        sink.abort()
        print("error: interrupted; completed inputs are kept (--out DIR/ --resume skips them)",
              file=sys.stderr)
        return 130
    finally:
        ray.shutdown()
    for f in failures:
        print(f"error: {f.path}: {f.reason}", file=sys.stderr, flush=True)
    sink.finish()
    return 1 if failures else 0


def _connect(ray: Any, address: str, device: str, workers: int | None) -> int:
    """Join the cluster; the number of workers to start. Raises :class:`RayUsageError`."""
    if address not in ("auto", "local"):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise RayUsageError("expected HOST:PORT of the head's GCS (e.g. 10.0.0.5:6379), 'auto' or 'local'")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise RayUsageError(f"unreachable: {err.strerror or err}; is `ray start --head` running "
                                "there and the port open?") from err
    try:
        ray.init(address=None if address == "local" else address, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise RayUsageError(f"cannot join the cluster: {err}") from err
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))
    if device.startswith("cuda"):
        if gpus == 0:
            ray.shutdown()
            raise RayUsageError(f"--device {device}: the cluster has 0 GPUs ({cpus} CPUs); "
                                "use --device cpu or add GPU nodes")
        n = workers or gpus
    else:
        n = workers or max(1, cpus)
    logger.info("ray cluster: %d nodes, %d CPUs, %d GPUs; %d workers", len(ray.nodes()), cpus, gpus, n)
    return n


@dataclass
class _Input:
    path: str
    plan: InputPlan | None = None
    outputs: dict[int, SegmentOutput] = field(default_factory=dict)
    generation: int = 0
    """Bumped when the input falls back to whole-file processing: older results are dropped."""
    failure: str | None = None


@dataclass
class _Task:
    item: _Input
    seg: Segment
    generation: int
    attempts: int = 0
    submitted: float = 0.0


class _Job:
    """One run of the driver loop over the cluster's workers."""

    def __init__(self, ray: Any, actors: Sequence[Any], options: ProcessOptions, sink: OutputSink,
                 segment_frames: int) -> None:
        self.ray, self.actors, self.options, self.sink = ray, list(actors), options, sink
        self.segment_frames = segment_frames
        self.alive_at = [0.0] * len(actors)
        self.pings: dict[Any, int] = {}
        self.started = time.monotonic()
        self.stats = RunStats()
        self.progress: dict[int, tuple[tuple[str, int], int]] = {}
        """Per worker: ``((path, segment), frames done)`` from its last ping."""

    def run(self, paths: Sequence[str]) -> list[InputFailure]:
        """Process ``paths``; the inputs that failed (in input order)."""
        ray = self.ray
        self._await_workers()
        items = [_Input(p) for p in paths]
        plans = [self.actors[i % len(self.actors)].plan.remote(it.path, os.path.abspath(it.path),
                                                               self.segment_frames)
                 for i, it in enumerate(items)]
        queue: list[_Task] = []
        for it, plan in zip(items, ray.get(plans), strict=True):
            if isinstance(plan, str):
                it.failure = plan
                continue
            it.plan = plan
            queue.extend(_Task(it, s, 0) for s in plan.segments)
        known = [it.plan.expected_frames for it in items if it.plan is not None]
        total = None if None in known else sum(k for k in known if k is not None)
        running: dict[Any, tuple[int, _Task]] = {}
        idle = list(range(len(self.actors)))
        lost: set[int] = set()
        done_frames, shown = 0, 0
        emitted = 0
        with progress(f"ray: {len(items)} inputs", total) as bar:
            while queue or running:
                while queue and idle:
                    a = idle.pop(0)
                    task = queue.pop(0)
                    task.submitted = time.monotonic()
                    running[self.actors[a].run.remote(task.seg)] = (a, task)
                if running:
                    ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                else:  # every worker lost: wait for one to come back (Ray restarts them)
                    ready = []
                    time.sleep(0.5)
                    if time.monotonic() - max(self.alive_at) > WORKER_START_S:
                        raise RuntimeError(f"no worker alive for {WORKER_START_S:.0f} s; "
                                           "inputs not written yet were not processed")
                for ref in ready:
                    a, task = running.pop(ref)
                    self.progress.pop(a, None)
                    frames, worker_ok = self._finish(ref, task, queue)
                    done_frames += frames
                    if worker_ok:
                        idle.append(a)
                    else:  # back once it answers a ping again
                        lost.add(a)
                        self.alive_at[a] = 0.0
                alive = self._poll_workers()
                self._reroute_stalled(running, queue, idle, lost)
                now_done = done_frames + sum(
                    done for a, (key, done) in self.progress.items()
                    if any(b == a and (t.seg.path, t.seg.number) == key for b, t in running.values()))
                if now_done > shown:
                    bar.update(now_done - shown)
                    shown = now_done
                bar.set_postfix(f"workers alive {alive}/{len(self.actors)}")
                emitted = self._emit_ready(items, emitted)
        self._emit_ready(items, emitted, final=True)
        logger.info("ray: %s", self.stats.summary(time.monotonic() - self.started))
        return [InputFailure(it.path, it.failure) for it in items if it.failure is not None]

    def _await_workers(self) -> None:
        """Wait until the workers have loaded the model; drop those that cannot start in time."""
        pings = {a.ping.remote(): a for a in self.actors}
        ready, pending = self.ray.wait(list(pings), num_returns=len(pings), timeout=WORKER_START_S)
        up = []
        for ref in ready:
            try:
                self.ray.get(ref)
                up.append(pings[ref])
            except Exception as err:  # the model failed to load there
                raise RuntimeError(f"a worker failed to start: {_first_line(err)}") from err
        if not up:
            raise RuntimeError(f"no worker started within {WORKER_START_S:.0f} s; "
                               "does the cluster have free CPUs/GPUs (`ray status`)?")
        if pending:
            logger.warning("%d of %d workers did not start within %.0f s (no free resources?); "
                           "going on with %d", len(pending), len(pings), WORKER_START_S, len(up))
            for ref in pending:
                self.ray.kill(pings[ref])
        self.actors = up
        self.alive_at = [time.monotonic()] * len(up)

    def _reroute_stalled(self, running: dict[Any, tuple[int, _Task]], queue: list[_Task],
                         idle: list[int], lost: set[int]) -> None:
        """Hand the segment of a worker silent for :data:`STALL_S` to another worker.

        Ray restarts a dead worker, but one whose node died waits for free resources, possibly
        forever; its segment is redone elsewhere and its late result, if any, is ignored (the
        ref is forgotten). The worker is used again once it answers a ping.
        """
        now = time.monotonic()
        for a in list(lost):
            if now - self.alive_at[a] < ALIVE_WINDOW_S:
                lost.discard(a)
                idle.append(a)
        for ref, (a, task) in list(running.items()):
            if now - max(self.alive_at[a], task.submitted) > STALL_S:
                logger.warning("%s segment %d: worker silent for %.0f s (node lost?); running it "
                               "on another worker", task.item.path, task.seg.number, STALL_S)
                del running[ref]
                self.progress.pop(a, None)
                lost.add(a)
                queue.insert(0, task)

    def _finish(self, ref: Any, task: _Task, queue: list[_Task]) -> tuple[int, bool]:
        """Take a finished segment's result: the frames it adds to the progress, and False when
        its worker died (more often than Ray retries it)."""
        it = task.item
        try:
            out = load_output(self.ray.get(ref))
        except Exception as err:  # the worker died more often than Ray retries, or a bug raised
            if task.attempts < RESUBMITS and _is_worker_death(err):
                logger.warning("%s segment %d: worker lost (%s); submitting again", it.path,
                               task.seg.number, type(err).__name__)
                task.attempts += 1
                queue.insert(0, task)
                return 0, False
            if task.generation == it.generation:
                it.failure = f"segment {task.seg.number} failed on the cluster: {_first_line(err)}"
            return 0, not _is_worker_death(err)
        self.stats.add(time.monotonic() - task.submitted, out.elapsed_s, self.started)
        if task.generation != it.generation or it.failure is not None:
            return 0, True
        if (out.mismatch or out.error is not None) and not task.seg.whole:
            logger.warning("%s: %s; processing the file whole", it.path, out.error)
            it.generation += 1
            it.outputs.clear()
            assert it.plan is not None
            it.plan = whole_plan(it.path, it.plan.expected_frames, task.seg.video, task.seg.file)
            queue.insert(0, _Task(it, it.plan.segments[0], it.generation))
            return 0, True
        if task.seg.number in it.outputs:  # a rerouted segment's first run came back after all
            return 0, True
        it.outputs[task.seg.number] = out
        return out.frames, True

    def _poll_workers(self) -> int:
        """Refresh liveness and in-segment progress from the workers' pings; workers alive."""
        ray, now = self.ray, time.monotonic()
        if self.pings:
            ready, _ = ray.wait(list(self.pings), num_returns=len(self.pings), timeout=0)
            for ref in ready:
                a = self.pings.pop(ref)
                try:
                    _pid, current, done = ray.get(ref)
                except Exception:  # a dead worker's ping fails; Ray restarts it
                    continue
                self.alive_at[a] = now
                if current is not None:
                    self.progress[a] = (current, done)
        waiting = set(self.pings.values())
        for a, actor in enumerate(self.actors):
            if a not in waiting:
                self.pings[actor.ping.remote()] = a
        return sum(now - t < ALIVE_WINDOW_S for t in self.alive_at)

    def _emit_ready(self, items: list[_Input], emitted: int, final: bool = False) -> int:
        """Write every input whose segments are all back; merged output keeps input order."""
        for i, it in enumerate(items):
            if i < emitted and self.sink.merged:
                continue
            if it.path in self.sink.written:
                continue
            if not (it.failure is not None or (it.plan is not None
                                               and len(it.outputs) == len(it.plan.segments))):
                if self.sink.merged and not final:
                    break
                continue
            error = it.failure
            outs = [it.outputs[n] for n in sorted(it.outputs)] if it.failure is None else []
            for o in outs:
                if o.error is not None:
                    error = o.error
                    outs = outs[:outs.index(o) + 1]
                    break
            it.failure = error
            emit_lines(self.sink, it.path, outs, self.options, ok=error is None)
            if self.sink.merged:
                emitted = i + 1
        return emitted


def _is_worker_death(err: Exception) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, WorkerCrashedError

    return isinstance(err, ActorDiedError | ActorUnavailableError | WorkerCrashedError)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
