"""``streamer bench``: our PyTorch runner against torchvision's eager model, same weights, same frames.

    streamer bench [--model PATH] [--input VIDEO] [--frames 8] [--batch 1,4] [--device cpu]

Both models get the same decoded frames; ours returns full-resolution pasted masks too
(``Detections.paste``), as torchvision does, so the two timings cover the same work. Runs are
interleaved (ours, torchvision, ours, ...) so that load on a shared machine hits both alike.
Prints per-frame milliseconds, frames/s and the ratio torchvision/ours (> 1: ours is faster),
plus the parity gate's verdict on ours against torchvision (:mod:`engines.parity`: torchvision
runs again with perturbed weights to find its stable instances; ours must reproduce them).

A development benchmark: it needs torchvision, which the runtime does not; install it with
``pip install 'maskrcnn-streamer[bench]'`` (the command says so when it is missing). The
torchvision side is :mod:`engines.reference`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engines.parity import GateMarks, GateStats, judge_frame, perturbed_copy
from engines.runner import Detections
from engines.torch_runner import TorchRunner, torch_device
from engines.weights import ModelLoadError, load_model

BENCH_INSTALL = "pip install 'maskrcnn-streamer[bench]'"
"""How to install what ``streamer bench`` needs beyond the runtime (torchvision)."""


def _batches(text: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes are comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return out


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("bench", help="time our PyTorch runner against torchvision on the same frames",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model file or torchvision checkpoint (default: demo model)")
    p.add_argument("--input", type=Path, default=None, help="video to decode frames from (default: sample video)")
    p.add_argument("--frames", type=int, default=8, help="frames to time (default 8)")
    p.add_argument("--batch", type=_batches, default=[1, 4], help="batch sizes, e.g. 1,4 (default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes over the frames (default 2)")
    p.set_defaults(func=run)


def read_frames(path: Path, n: int) -> list[np.ndarray]:
    from streamer.media import open_media

    frames = []
    with open_media(path) as reader:
        for frame in reader:
            frames.append(frame.image)
            if len(frames) == n:
                break
    return frames


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> int:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        print(f"error: streamer bench needs torchvision: {BENCH_INSTALL}", file=sys.stderr)
        return 1
    from engines.reference import torchvision_detections, torchvision_model
    from streamer.demo import sample_video_path

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch_device(args.device)
        lm = load_model(args.model)
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    frames = read_frames(args.input or sample_video_path(), args.frames)
    tv = torchvision_model(lm.model.cfg, lm.model.state_dict()).to(device)
    ours = TorchRunner(copy.deepcopy(lm.model), lm.class_names, lm.name, device=str(device))

    def run_ours(batch: list[np.ndarray]) -> list[Detections]:
        dets = ours.infer(batch)
        for d in dets:
            d.paste()
        return dets

    def run_tv(batch: list[np.ndarray], model: torch.nn.Module = tv) -> list[Detections]:
        return torchvision_detections(model, batch, batch_size=len(batch))

    h, w = frames[0].shape[:2]
    print(f"model {lm.name} ({lm.model.cfg.backbone}-FPN, {lm.model.cfg.num_classes} classes), {len(frames)} frames "
          f"{w}x{h}, device {device}, torch threads {torch.get_num_threads()}")
    print("| batch | ours ms/frame | torchvision ms/frame | ours fps | torchvision fps | ratio tv/ours |")
    print("|---|---|---|---|---|---|")
    for b in args.batch:
        groups = [frames[i:i + b] for i in range(0, len(frames), b)]
        run_ours(groups[0])
        run_tv(groups[0])  # warm-up
        t_ours: list[float] = []
        t_tv: list[float] = []
        for _ in range(args.repeats):
            for g in groups:
                for fn, acc in ((run_ours, t_ours), (run_tv, t_tv)):
                    t0 = time.perf_counter()
                    fn(g)
                    _sync(device)
                    acc.append((time.perf_counter() - t0) / len(g))
        mo, mt = statistics.median(t_ours), statistics.median(t_tv)
        print(f"| {b} | {mo * 1e3:.1f} | {mt * 1e3:.1f} | {1 / mo:.2f} | {1 / mt:.2f} | {mt / mo:.3f} |")
    marks = GateMarks()
    refs, ours_dets = run_tv(frames), run_ours(frames)
    perturbed = [run_tv(frames, perturbed_copy(tv, marks.perturbation, seed))
                 for seed in range(1, marks.perturbed_runs + 1)]
    gate = GateStats()
    for i, (r, c) in enumerate(zip(refs, ours_dets, strict=True)):
        gate = gate.merge(judge_frame(r, [p[i] for p in perturbed], c))
    failures = gate.failures(marks)
    print(f"parity gate, ours vs torchvision on these frames: {'FAIL' if failures else 'PASS'}: {gate.summary()}"
          + (f" ({'; '.join(failures)})" if failures else ""))
    return 0

