"""``streamer process``: run the model over video and image files, offline.

::

    streamer process clip.mp4 photo.png --model model.safetensors --out detections.jsonl \\
        --annotate annotated/

Writes one frame message (``docs/frame-schema.json``) per decoded frame as a JSON line, in
input order, then frame order. Inputs that fail (missing, not media, truncated) are
reported on stderr as ``error: <path>: <reason>`` and skipped; the others are still
processed. Exit status: 0 all inputs processed, 1 an input or the model failed, 2 usage
errors (bad option values, ``--model`` path that does not exist, unwritable ``--out``).

``process_inputs`` is the command without argument parsing: it takes a loaded ``Runner``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import av

from engines.runner import Runner
from streamer.annotate import AnnotateTarget, FrameWriter, draw_detections
from streamer.frames import Frame
from streamer.media import MediaError, open_media
from streamer.messages import MessageSpec, batch_results
from streamer.progress import progress
from streamer.schema import MaskEncoding, dumps
from streamer.tracking_config import TrackingConfig

if TYPE_CHECKING:
    from streamer.tracking import Tracker

logger = logging.getLogger(__name__)

MASK_ENCODINGS: tuple[MaskEncoding, ...] = ("rle", "polygon", "none")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


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


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``process`` subcommand; its ``func`` is ``run``."""
    p = subparsers.add_parser(
        "process", help="run the model over video/image files, write JSON lines",
        description="Run instance segmentation over video and image files and write one JSON "
                    "frame message per frame (docs/frame-schema.json).")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video (mp4, mkv, webm, avi, mov, gif, ...) or image (png, jpg) files")
    p.add_argument("--model", metavar="PATH", default=None,
                   help="model file (.safetensors, or a torchvision .pth/.pt checkpoint); "
                        "default: the embedded demo model")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--backend", metavar="NAME", default=None,
                   help="runtime: pytorch, onnxruntime, tensorrt (default: chosen by the model file)")
    p.add_argument("--batch", type=_positive_int, default=1, metavar="N",
                   help="frames per inference call (default: 1)")
    p.add_argument("--score-threshold", type=_unit_float, default=0.5, metavar="T",
                   help="drop instances scoring below T (default: 0.5)")
    p.add_argument("--out", default="-", metavar="FILE.jsonl",
                   help="JSON lines output; '-' is stdout (default)")
    p.add_argument("--annotate", type=_annotate_target, default=None, metavar="OUT.mp4|DIR/",
                   help="also write annotated frames: a video (one per input: OUT-<stem>.mp4 "
                        "when several) or a directory of PNGs")
    p.add_argument("--annotate-threshold", type=_unit_float, default=None, metavar="T",
                   help="draw only instances scoring at least T in annotated frames "
                        "(default: --score-threshold)")
    p.add_argument("--mask-encoding", choices=MASK_ENCODINGS, default="rle",
                   help="instance masks as COCO RLE (default), polygons, or none")
    p.add_argument("--no-track", action="store_true",
                   help="no tracking: instances carry no track_id (default: each video input is "
                        "tracked, [tracking] defaults)")
    # deferred: ray_process imports this module (and imports Ray itself only with --ray)
    from streamer import ray_process

    ray_process.add_arguments(p)
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``streamer process`` after parsing: 0 ok, 1 an input or the model failed, 2 usage."""
    parser: argparse.ArgumentParser = args.parser
    if args.annotate is not None:
        try:
            args.annotate.check_inputs(args.inputs)
        except ValueError as err:
            parser.error(str(err))
    if args.model is not None and not Path(args.model).exists():
        parser.error(f"--model {args.model}: no such file; pass an existing model file, "
                     "or omit --model for the embedded demo model")
    options = ProcessOptions(batch_size=args.batch, score_threshold=args.score_threshold,
                             mask_encoding=args.mask_encoding, annotate=args.annotate,
                             annotate_threshold=args.annotate_threshold,
                             tracking=None if args.no_track else TrackingConfig())
    from streamer import ray_process

    if args.ray is not None:
        return ray_process.run_ray(args, options)
    if (misuse := ray_process.ray_only_misuse(args)) is not None:
        parser.error(misuse)
    with contextlib.ExitStack() as stack:
        try:
            out = stack.enter_context(_open_output(args.out))
        except OSError as err:
            parser.error(f"--out {args.out}: cannot write: {err.strerror or err}")
        runner = _load_runner(args.model, args.device, args.backend)
        if runner is None:
            return 1
        stack.callback(runner.close)
        try:
            failures = process_inputs(args.inputs, runner, out, options)
        except BrokenPipeError:  # `streamer process ... | head`: the reader left before the end
            _silence_stdout()
            print("error: output closed before all frames were written", file=sys.stderr)
            return 1
        except (OSError, av.FFmpegError) as err:  # writing --out or --annotate failed (disk full, ...)
            print(f"error: cannot write the output: {err}", file=sys.stderr, flush=True)
            return 1
    return 1 if failures else 0


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
            for batch in _equal_size_batches(reader, options.batch_size):
                _infer_batch(path, batch, runner, out, options, writer, tracker)
                done += len(batch)
                bar.update(len(batch))
        finally:
            if writer is not None:
                writer.close()
        return done


def _equal_size_batches(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
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


def _infer_batch(source: str, batch: Sequence[Frame], runner: Runner, out: TextIO,
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


def _load_runner(model: str | None, device: str, backend: str | None) -> Runner | None:
    """The loaded runner, or None after printing one ``error:`` line (exit status 1)."""
    from engines.loading import load_runner  # deferred: loading imports torch

    try:
        runner: Runner = load_runner(model, device=device, backend=backend,
                                     paste_threshold=MessageSpec.mask_threshold)  # GPU paste on CUDA
    except Exception as err:  # any load failure is reported as one line, never a traceback
        what = model if model is not None else "embedded demo model"
        reason = str(err).removeprefix(f"{what}: ")  # loaders often name the file themselves
        print(f"error: {what}: cannot load the model: {reason}", file=sys.stderr, flush=True)
        logger.debug("model load failure", exc_info=True)
        return None
    logger.info("model %s (%s on %s), %d classes", runner.info.name, runner.info.backend,
                runner.info.device, len(runner.info.class_names) - 1)
    return runner


@contextlib.contextmanager
def _open_output(target: str) -> Iterator[TextIO]:
    if target == "-":
        yield sys.stdout
        return
    with open(target, "w", encoding="utf-8") as f:
        yield f


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {value!r}")
    return value


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return n


def _unit_float(value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        t = -1.0
    if not 0.0 <= t <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}")
    return t


def _annotate_target(value: str) -> AnnotateTarget:
    try:
        return AnnotateTarget.parse(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
