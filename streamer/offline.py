"""Offline processing as a library: frames of files → frame messages, one input after another.

``streamer process`` (:mod:`streamer.process_cli`) parses its arguments into
:class:`ProcessOptions`, loads a runner and calls :func:`process_inputs`; the Ray path
(:mod:`streamer.ray_worker`) runs the same batching and postprocessing per segment::

    failures = process_inputs(["clip.mp4", "photo.png"], runner, out, ProcessOptions(batch_size=4))

Each input is decoded (:func:`streamer.media.open_media`), cut into batches of consecutive frames
of equal size, inferred, postprocessed (:func:`streamer.messages.batch_results`), tracked per
video input (pts as the frame time), written as JSON lines and optionally drawn.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from engines.runner import Runner
from streamer.annotate import AnnotateTarget, FrameWriter, draw_detections
from streamer.encodings import MaskEncoding
from streamer.frame_json import dumps
from streamer.frames import Frame
from streamer.media import MediaError, open_media
from streamer.messages import MessageSpec, batch_results
from streamer.progress import progress
from streamer.tracking_config import TrackingConfig

if TYPE_CHECKING:
    from streamer.tracking import Tracker

logger = logging.getLogger("streamer.process_cli")


@dataclass(frozen=True)
class ProcessOptions:
    """How ``process_inputs`` turns frames into messages."""

    batch_size: int = 1
    """Frames per ``Runner.infer`` call (consecutive frames of equal size), >= 1."""
    score_threshold: float = 0.5
    """Instances scoring below this are dropped, in [0, 1]."""
    mask_encoding: MaskEncoding = "rle"
    """How instance masks appear in messages: COCO RLE, polygons, or omitted."""
    annotate: AnnotateTarget | None = None
    """Where annotated frames go; None writes none."""
    annotate_threshold: float | None = None
    """Annotated frames draw instances scoring at least this; None: ``score_threshold``."""
    tracking: TrackingConfig | None = field(default_factory=TrackingConfig)
    """Track each video input (``track_id`` on every instance, timed by pts); None: no tracking.
    Images are never tracked."""


@dataclass(frozen=True)
class InputFailure:
    """An input that could not be processed to its end (its decodable frames were)."""

    path: str
    reason: str


def process_inputs(inputs: Sequence[str], runner: Runner, out: TextIO,
                   options: ProcessOptions = ProcessOptions(),
                   errors: TextIO | None = None) -> list[InputFailure]:
    """Process each input in turn; the inputs that failed (each already reported on ``errors``).

    ``errors`` (default ``sys.stderr``) gets one ``error: <path>: <reason>`` line per failure.
    A failing input still yields the messages of the frames that decoded before the failure.
    """
    err_stream = sys.stderr if errors is None else errors
    failures = []
    for path in inputs:
        try:
            process_one(path, runner, out, options, n_inputs=len(inputs))
        except MediaError as err:
            failures.append(InputFailure(err.path, err.reason))
            print(f"error: {err}", file=err_stream, flush=True)
    return failures


def process_one(path: str, runner: Runner, out: TextIO, options: ProcessOptions,
                n_inputs: int = 1) -> int:
    """Run ``runner`` over every frame of ``path``, writing messages to ``out``; the frame count.

    Raises ``MediaError`` after processing the decodable frames when the file is truncated,
    or before any output when it cannot be opened.
    """
    with open_media(path) as reader, progress(path, reader.info.expected_frames) as bar:
        writer = (options.annotate.writer_for(path, reader.info, n_inputs)
                  if options.annotate is not None else None)
        done = 0
        tracker = None
        if options.tracking is not None and options.tracking.enabled and reader.info.kind == "video":
            from streamer.tracking import Tracker  # deferred: numpy/scipy only when tracking

            tracker = Tracker(options.tracking, path)
        try:
            for batch in equal_size_batches(reader, options.batch_size):
                infer_batch(path, batch, runner, out, options, writer, tracker)
                done += len(batch)
                bar.update(len(batch))
        finally:
            if writer is not None:
                writer.close()
        return done


def equal_size_batches(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    """Consecutive frames grouped by ``size``; a batch ends early where the frame size changes.

    If the source raises mid-way, the frames already read are yielded first as a batch, then the
    error propagates (so a truncated file still gets its decoded frames processed).
    """
    batch: list[Frame] = []
    try:
        for frame in frames:
            if batch and frame.image.shape != batch[0].image.shape:
                yield batch
                batch = []
            batch.append(frame)
            if len(batch) == size:
                yield batch
                batch = []
    except MediaError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def infer_batch(source: str, batch: Sequence[Frame], runner: Runner, out: TextIO,
                 options: ProcessOptions, writer: FrameWriter | None, tracker: Tracker | None = None) -> None:
    try:
        dets = runner.infer([f.image for f in batch])
    except ValueError as err:  # e.g. engines.static_io.FrameSizeError: a size the engine was not built for
        raise MediaError(source, f"frame {batch[0].index}: {err}") from err
    names = runner.info.class_names
    spec = MessageSpec(names, frozenset({options.mask_encoding}), options.score_threshold, live=False)
    need_masks = writer is not None or tracker is not None
    for frame, result in zip(batch, batch_results(batch, dets, spec, need_masks=need_masks), strict=True):
        if result.dropped:
            logger.warning("%s frame %d: dropped invalid instances from the runner: %s", source, frame.index,
                           ", ".join(f"{n} {reason}" for reason, n in result.dropped.items()))
        if tracker is not None:
            from streamer.tracking_pipeline import track_result

            track_result(tracker, frame, result, frame.pts)
        out.write(dumps(result.messages[options.mask_encoding]) + "\n")
        if writer is not None:
            kept = result.detections
            shown = kept.scores >= (options.annotate_threshold or 0.0)  # None: everything kept is drawn
            masks = None if result.masks is None else [m for m, s in zip(result.masks, shown.tolist(),
                                                                           strict=True) if s]
            ids = None if result.track_ids is None else [t for t, s in zip(result.track_ids, shown.tolist(),
                                                                           strict=True) if s]
            writer.write(draw_detections(frame.image, kept.select(shown), masks, names, track_ids=ids))
    out.flush()
