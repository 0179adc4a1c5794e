"""``streamer process``: run the model over video and image files, offline.

::

    streamer process clip.mp4 photo.png --model model.safetensors --out detections.jsonl \\
        --annotate annotated/

Writes one frame message (``docs/frame-schema.json``) per decoded frame as a JSON line, in
input order, then frame order. Inputs that fail (missing, not media, truncated) are
reported on stderr as ``error: <path>: <reason>`` and skipped; the others are still
processed. Exit status: 0 all inputs processed, 1 an input or the model failed, 2 usage
errors (bad option values, ``--model`` path that does not exist, unwritable ``--out``).

The command without argument parsing is :func:`streamer.offline.process_inputs`: it takes a
loaded ``Runner``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import av

from engines.devices import DeviceError, parse_device
from engines.runner import Runner
from streamer import ray_process
from streamer.annotate import AnnotateTarget
from streamer.encodings import MASK_ENCODINGS
from streamer.messages import MessageSpec
from streamer.offline import ProcessOptions, process_inputs
from streamer.tracking_config import TrackingConfig

logger = logging.getLogger(__name__)



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
    try:
        return str(parse_device(value))
    except DeviceError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


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
