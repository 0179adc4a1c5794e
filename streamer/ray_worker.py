"""The worker side of ``streamer process --ray``: a Ray actor that loads the model once and keeps it.

:mod:`streamer.ray_process` wraps :class:`SegmentWorker` in ``ray.remote`` (one actor per GPU with
``num_gpus=1`` for ``--device cuda``, one per CPU otherwise). Each actor plans inputs
(:func:`streamer.segments.plan_segments`) and runs segments: decode (on the worker: frames never
leave it), ``Runner.infer``, :func:`streamer.messages.batch_results`, exactly as
``streamer process`` does locally, and returns the segment's result as one zlib-compressed
pickle. Without tracking a frame's result is its finished JSON line; with tracking it is the slim
:class:`~streamer.messages.FrameResult` (boxes, scores, labels, box-local masks, messages;
no mask probabilities) that the driver's per-input tracker needs, in frame order.

This module imports neither Ray nor torch at import time: the driver pickles the class by
reference, and each worker node must have ``maskrcnn-streamer[ray]`` installed.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from engines.runner import Detections, Runner
from streamer.frame_json import dumps
from streamer.frames import Frame
from streamer.media import MediaError
from streamer.messages import FrameResult, MessageSpec, batch_results
from streamer.offline import ProcessOptions, equal_size_batches
from streamer.segments import InputPlan, Segment, SegmentMismatch, decode_segment, plan_segments

COMPRESS_LEVEL = 1
"""zlib level of segment results: fast; JSON lines with RLE masks shrink several-fold anyway."""


@dataclass
class SegmentOutput:
    """What one segment produced (unpickled by the driver from :meth:`SegmentWorker.run`)."""

    path: str
    number: int
    frames: int = 0
    """Frames processed (all of them, or those before ``error``)."""
    lines: list[str] = field(default_factory=list)
    """The frames' JSON lines (untracked runs)."""
    tracked: list[tuple[int, float | None, FrameResult]] = field(default_factory=list)
    """``(index, pts, slim result)`` per frame (tracked runs): the driver tracks and serialises."""
    error: str | None = None
    """Why the segment stopped early (a ``MediaError`` reason), None when complete."""
    mismatch: bool = False
    """The time segment decoded another frame count than planned: process the file whole."""
    worker_pid: int = 0
    """The worker process that produced it."""
    elapsed_s: float = 0.0
    """Seconds the worker spent on it (decode, inference, messages, pickling not included)."""


class SegmentWorker:
    """A model held in one worker process; ``plan`` and ``run`` are its Ray methods."""

    def __init__(self, model: str | None, device: str, backend: str | None,
                 options: ProcessOptions) -> None:
        from engines.loading import load_runner  # deferred: torch

        self.options = options
        self.runner: Runner = load_runner(model, device=device, backend=backend,
                                          paste_threshold=MessageSpec.mask_threshold)
        self._lock = threading.Lock()
        self._current: tuple[str, int] | None = None
        self._done = 0

    def ping(self) -> tuple[int, tuple[str, int] | None, int]:
        """``(pid, (path, segment) being run or None, frames done in it)``: liveness and progress."""
        with self._lock:
            return os.getpid(), self._current, self._done

    def plan(self, path: str, file: str, target_frames: int | None) -> InputPlan | str:
        """The segments of input ``path`` read at ``file``, or the ``MediaError`` reason when it
        cannot be opened on this worker's node."""
        try:
            return plan_segments(path, target_frames, file)
        except MediaError as err:
            if err.reason in ("no such file", "permission denied"):
                return f"{err.reason} {WHERE_INPUTS_ARE_READ.format(node=_node())}"
            return err.reason
        except OSError as err:
            return f"cannot read: {err.strerror or err}"

    def run(self, seg: Segment) -> bytes:
        """Process ``seg``; its :class:`SegmentOutput`, pickled and compressed."""
        out = SegmentOutput(seg.path, seg.number, worker_pid=os.getpid())
        with self._lock:
            self._current, self._done = (seg.path, seg.number), 0
        _set_title(f"ray::SegmentWorker.run {seg.path}#{seg.number}", busy=True)
        start = time.perf_counter()
        try:
            self._run(seg, out)
        except SegmentMismatch as err:
            out.mismatch, out.error = True, err.reason
        except MediaError as err:
            out.error = err.reason
        finally:
            out.elapsed_s = time.perf_counter() - start
            _set_title("ray::SegmentWorker", busy=False)
            with self._lock:
                self._current = None
        return zlib.compress(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL), COMPRESS_LEVEL)

    def _run(self, seg: Segment, out: SegmentOutput) -> None:
        opts = self.options
        tracking = opts.tracking is not None and opts.tracking.enabled
        spec = MessageSpec(self.runner.info.class_names, frozenset({opts.mask_encoding}),
                           opts.score_threshold, live=False)
        for batch in equal_size_batches(decode_segment(seg), opts.batch_size):
            results = _infer(seg.path, batch, self.runner, spec, need_masks=tracking)
            for frame, result in zip(batch, results, strict=True):
                if tracking and seg.video:  # images are never tracked
                    out.tracked.append((frame.index, frame.pts, slim(result)))
                else:
                    out.lines.append(dumps(result.messages[opts.mask_encoding]))
            out.frames += len(batch)
            with self._lock:
                self._done = out.frames


BUSY_THREAD_NAME = "segment-run"
"""The name of the worker thread while it runs a segment (``/proc/PID/task/TID/comm``): unlike the
process title, which Ray rewrites for every call (pings included), it stays for the whole segment."""


WHERE_INPUTS_ARE_READ = ("on node {node} (with --ray the workers read the inputs: use a shared "
                         "file system or the same path on every node)")


def _node() -> str:
    """This worker's node address, for error messages."""
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:  # outside Ray (tests) or no address
        return "?"


def _set_title(title: str, busy: bool) -> None:
    """Show what the worker runs in ``ps`` and in its thread name. Best effort: Ray's own
    setproctitle (Ray titles plain actors ``ray::Class.method``, threaded ones like this not),
    and Linux's ``/proc/thread-self/comm``."""
    try:
        import ray._raylet as raylet

        getattr(raylet, "setproctitle")(title)  # noqa: B009 (private: absent from the stubs)
    except (ImportError, AttributeError):
        pass
    try:
        with open("/proc/thread-self/comm", "w") as f:
            f.write(BUSY_THREAD_NAME if busy else "segment-idle")
    except OSError:
        pass


def _infer(source: str, batch: list[Frame], runner: Runner, spec: MessageSpec,
           need_masks: bool) -> list[FrameResult]:
    """``streamer.offline.infer_batch`` up to the messages: infer, filter, paste, encode."""
    try:
        dets = runner.infer([f.image for f in batch])
    except ValueError as err:  # a frame size the engine was not built for
        raise MediaError(source, f"frame {batch[0].index}: {err}") from err
    return batch_results(batch, dets, spec, need_masks=need_masks)


def slim(result: FrameResult) -> FrameResult:
    """``result`` without mask probabilities and device-pasted masks: what tracking needs, small."""
    return replace(result, detections=_slim(result.detections),
                   candidates=None if result.candidates is None else _slim(result.candidates))


def _slim(det: Detections) -> Detections:
    return Detections(det.boxes, det.scores, det.labels, np.zeros((len(det), 0, 0), np.float32),
                      det.image_size, None)


def load_output(blob: bytes) -> SegmentOutput:
    """The :class:`SegmentOutput` of :meth:`SegmentWorker.run`'s result."""
    out: Any = pickle.loads(zlib.decompress(blob))
    if not isinstance(out, SegmentOutput):
        raise TypeError(f"a segment result must be a SegmentOutput, got {type(out).__name__}")
    return out
