"""``streamer bench-pipeline``: the daemon's whole path measured without (or with) the model.

Makes one synthetic H.264 clip (default 1920×1080), runs the daemon once over a short clip
(start-up is not throughput), then, in one run, ``--rounds`` times the first two phases one after
the other, and reports each round's ratio and their median (a VM's speed drifts by 10 % within
minutes: the two phases of a round see the same machine):

1. **decode ceiling** — N threads each demux + decode + convert to RGB the clip, nothing else:
   the most frames per second this machine can feed any pipeline;
2. **pipeline** — ``streamer run``'s daemon over N file sources of the clip (not paced), with
   :class:`~streamer.replay.ReplayRunner` answering ``K`` instances per frame instantly, their
   boxes moving from frame to frame (``--real``: the loaded model instead), postprocessing on the pool, a JSONL sink on disk,
   on the daemon's event loop (``--loop``: ``auto``, uvloop where installed, as ``streamer run``). Reports frames/s,
   CPU milliseconds per frame of each stage (``streamer_stage_cpu_seconds_total``) and the peak
   RSS of this phase (Linux VmHWM, reset before it), and how the CPU it spends beyond the decode
   ceiling splits: the decode thread's handoff, each stage, and the rest (event loop, batching,
   thread wake-ups, the sink's writer thread, the model's own threads with ``--real``, the kernel);
3. **postprocess** — one thread, one frame, ``K`` in ``--post-instances``: filter, box-local paste,
   RLE, JSON line (:func:`streamer.messages.frame_result`), back to back and with the caches
   flooded between frames (as the decoders flood them in the pipeline), against the full-frame
   reference path (paste K×H×W, threshold, pycocotools ``encode``) that the pipeline used before.

    streamer bench-pipeline --streams 4 --frames 200 --instances 20 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_args

import numpy as np

from streamer import event_loop
from streamer.event_loop import EventLoopChoice

log = logging.getLogger("streamer.bench_pipeline")
_T = TypeVar("_T")

REPLAY_SEED = 0
"""Seed of the synthetic detections of every phase: the postprocess step measures the frames the
pipeline phase published (at 20 instances about 420,000 box pixels per 1080p frame)."""
EVICT_BYTES = 64 << 20
"""Bytes written before each cache-cold postprocess frame: more than a server CPU's last-level
cache (this machine's: 32 MiB), about what decoding and converting ten 1080p frames writes."""
WARMUP_FRAMES = 8
"""Frames of the clip the daemon runs once before the timed pipeline phase: module imports
(sinks, tracking, scipy), thread pools and first allocations are start-up, not throughput."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("bench-pipeline", help="measure the daemon's pipeline (decode to sink) without the model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=4, help="file sources run at once (default 4)")
    p.add_argument("--frames", type=int, default=100, help="frames of the synthetic clip (default 100)")
    p.add_argument("--size", default="1920x1080", help="WxH of the clip (default 1920x1080)")
    p.add_argument("--instances", type=int, default=20, help="instances per frame from the replay runner")
    p.add_argument("--batch", type=int, default=4, help="[batching] max_batch_size (default 4)")
    p.add_argument("--workers", type=int, default=2, help="[inference] postprocess_workers (default 2)")
    p.add_argument("--no-tracking", dest="tracking", action="store_false",
                   help="[tracking] enabled = false in the pipeline phase (default: on, as in streamer run)")
    p.add_argument("--encoding", choices=("rle", "polygon", "none"), default="rle",
                   help="the JSONL sink's mask encoding (default rle; none with --no-tracking: the daemon's "
                        "own cost, no mask pasted)")
    p.add_argument("--rounds", type=_positive, default=3,
                   help="decode-only / pipeline pairs run alternately; the median round is reported (the lower middle one of an even count; default 3)")
    p.add_argument("--post-instances", default="20,100", help="K values of the postprocess step (default 20,100)")
    p.add_argument("--real", action="store_true", help="run the model (--model, --device) instead of the replay")
    p.add_argument("--model", default=None, help="with --real: model file (default: the demo model)")
    p.add_argument("--device", default="cpu", help="with --real: cpu, cuda, cuda:N")
    p.add_argument("--paste-device", default=None, metavar="DEVICE",
                   help="replay runner: paste masks on this device (e.g. cuda), as a CUDA runner does")
    p.add_argument("--loop", choices=get_args(EventLoopChoice), default="auto",
                   help="the daemon's event loop (event_loop; default auto: uvloop if installed)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    p.set_defaults(func=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _minor_faults() -> int:
    """Minor page faults of this process so far (memory the kernel had to map in, zeroed)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _measure(work: Callable[[], _T]) -> tuple[_T, tuple[float, float, int]]:
    """``work()``'s result and what it took: wall seconds, process CPU seconds, minor page faults."""
    wall, cpu, faults = time.perf_counter(), time.process_time(), _minor_faults()
    result = work()
    return result, (time.perf_counter() - wall, time.process_time() - cpu, _minor_faults() - faults)


def _per_frame(frames: int, used: tuple[float, float, int]) -> dict[str, float]:
    """Frames/s, process CPU ms and page faults per frame of a phase that made ``frames``."""
    wall, cpu, faults = used
    return {"frames": frames, "wall_s": wall, "fps": frames / wall,
            "process_cpu_ms_per_frame": 1000 * cpu / max(frames, 1), "minor_faults_per_frame": faults / max(frames, 1)}


def _reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: ``5`` into ``/proc/self/clear_refs`` resets VmHWM)."""
    with contextlib.suppress(OSError):  # elsewhere the peak covers the whole process
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    """Peak resident set size since :func:`_reset_peak_rss` (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def decode_ceiling(video: Path, streams: int) -> dict[str, float]:
    """N threads decoding ``video`` to RGB at once: frames/s in total and CPU ms per frame."""
    from streamer.media import open_media

    counts = [0] * streams
    cpu = [0.0] * streams

    def decode(i: int) -> None:
        start = time.thread_time()
        with open_media(video) as reader:
            for _ in reader:
                counts[i] += 1
        cpu[i] = time.thread_time() - start

    def decode_all() -> None:
        threads = [threading.Thread(target=decode, args=(i,), name=f"decode-only-{i}") for i in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    _, used = _measure(decode_all)
    frames = sum(counts)
    return {**_per_frame(frames, used), "thread_cpu_ms_per_frame": 1000 * sum(cpu) / max(frames, 1)}


def pipeline(video: Path, streams: int, runner: Any, batch: int, workers: int, out: Path,
             tracking: bool = True, encoding: str = "rle", loop: EventLoopChoice = "auto") -> dict[str, Any]:
    """The daemon over ``streams`` unpaced file sources of ``video`` with ``runner``, JSONL to
    ``out`` with masks in ``encoding`` (``tracking``: the ``[tracking]`` stage on, as by default),
    on the ``loop`` event loop (``event_loop``, :mod:`streamer.event_loop`)."""
    from prometheus_client import CollectorRegistry

    from streamer.config import StreamerConfig
    from streamer.daemon import Daemon
    from streamer.stats import PIPELINE_STAGES

    cfg = StreamerConfig.model_validate({
        "sources": [{"name": f"s{i}", "url": str(video), "realtime": False} for i in range(streams)],
        "sinks": [{"type": "jsonl", "path": str(out), "max_bytes": 0, "mask_encoding": encoding}],
        "batching": {"max_batch_size": batch},
        "inference": {"postprocess_workers": workers},
        "tracking": {"enabled": tracking},
        "metrics": {"enabled": False},
        "shutdown": {"timeout_s": 3600},  # the files end long before a slow model drains them
        "event_loop": loop,
    })
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry=registry, runner=runner)
    _reset_peak_rss()
    code, used = _measure(lambda: event_loop.run(daemon.run(), cfg.event_loop))
    published = sum(1 for _ in out.open())
    stage_ms = {stage: 1000 * (registry.get_sample_value("streamer_stage_cpu_seconds_total", {"stage": stage}) or 0.0)
                / max(published, 1) for stage in PIPELINE_STAGES}
    return {"exit": code, **_per_frame(published, used), "stage_cpu_ms_per_frame": stage_ms,
            "peak_rss_mb": _peak_rss_mb()}


def model_only(video: Path, runner: Any, batch: int, repeats: int = 5) -> dict[str, float]:
    """``runner.infer`` alone on batches of ``batch`` decoded frames of ``video``: frames/s."""
    from streamer.media import open_media

    with open_media(video) as reader:
        frames = [f.image for _, f in zip(range(batch), reader, strict=False)]
    frames = (frames * batch)[:batch]
    runner.infer(frames)  # warm-up (allocations, autotuning)
    t0 = time.perf_counter()
    for _ in range(repeats):
        runner.infer(frames)
    wall = time.perf_counter() - t0
    return {"batch": batch, "fps": batch * repeats / wall}


def postprocess(k: int, height: int, width: int, repeats: int = 20) -> dict[str, float]:
    """One thread: CPU ms per frame of ``frame_result`` + JSON line for ``k`` instances (mean of
    ``repeats``, thread CPU time: what one core spends, whatever else the machine runs), back to
    back (``ms``: caches and branch predictors warm with the same frame) and with the caches
    flooded before each frame (``cold_ms``: :data:`EVICT_BYTES` written, as decoding 1080p video
    does between two frames on the same core — the cost the pipeline sees). The detections are
    those the pipeline's replay runner answers with first (same seed, before they move)."""
    import torch

    from streamer.frame_json import dumps
    from streamer.frames import Frame
    from streamer.messages import MessageSpec, frame_result
    from streamer.replay import REPLAY_CLASSES, synthetic_detections

    torch.set_num_threads(1)
    det = synthetic_detections(k, height, width, seed=REPLAY_SEED)
    frame = Frame("s", "s", 0, 0.0, 0.0, 0.0, np.zeros((1, 1, 3), np.uint8))
    spec = MessageSpec(REPLAY_CLASSES, frozenset({"rle"}), 0.5)

    def one_frame() -> None:
        dumps(frame_result(frame, det, spec).messages["rle"])

    one_frame()  # warm-up
    t0 = time.thread_time()
    for _ in range(repeats):
        one_frame()
    hot = (time.thread_time() - t0) / repeats
    flood = np.zeros(EVICT_BYTES, np.uint8)
    cold = 0.0
    for _ in range(repeats):
        flood += 1  # what a decoder does between two frames: every cache line replaced
        t0 = time.thread_time()
        one_frame()
        cold += time.thread_time() - t0
    return {"instances": k, "ms": 1000 * hot, "cold_ms": 1000 * cold / repeats}


def postprocess_full_frame(k: int, height: int, width: int) -> dict[str, float]:
    """The reference path this pipeline replaced: full-frame paste, threshold, pycocotools encode."""
    from engines.masks import paste_masks
    from streamer.replay import synthetic_detections
    from streamer.schema import encode_rle

    det = synthetic_detections(k, height, width, seed=REPLAY_SEED)
    _reset_peak_rss()
    rss0 = _peak_rss_mb()
    t0 = time.thread_time()
    encode_rle(paste_masks(det.mask_probs, det.boxes, height, width, 0.5))
    return {"instances": k, "ms": 1000 * (time.thread_time() - t0), "peak_rss_growth_mb": _peak_rss_mb() - rss0}


def run(args: argparse.Namespace) -> int:
    from streamer.replay import ReplayRunner, write_synthetic_video

    width, height = (int(v) for v in args.size.lower().split("x"))
    ks = [int(k) for k in args.post_instances.split(",") if k]
    report: dict[str, Any] = {"streams": args.streams, "size": [width, height], "instances": args.instances,
                              "batch": args.batch, "postprocess_workers": args.workers, "tracking": args.tracking,
                              "encoding": args.encoding,
                              "event_loop": event_loop.resolve(args.loop)}
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "synthetic.mp4"
        log.info("encoding a %dx%d clip of %d frames", width, height, args.frames)
        write_synthetic_video(video, args.frames, width, height)
        if args.real:
            from engines.loading import load_runner

            runner: Any = load_runner(args.model, device=args.device, paste_threshold=0.5)
            report["model_only"] = model_only(video, runner, args.batch)
        else:
            runner = ReplayRunner(args.instances, seed=REPLAY_SEED, paste_device=args.paste_device)
        report["runner"] = runner.info.name
        log.info("pipeline warm-up: the daemon once over a %d-frame clip", WARMUP_FRAMES)
        warmup = write_synthetic_video(Path(tmp) / "warmup.mp4", WARMUP_FRAMES, width, height)
        pipeline(warmup, args.streams, runner, args.batch, args.workers, Path(tmp) / "warmup.jsonl", args.tracking,
                 args.encoding, args.loop)
        rounds = []
        for i in range(args.rounds):
            log.info("round %d of %d: decode ceiling, then pipeline (%d streams, runner %s)",
                     i + 1, args.rounds, args.streams, runner.info.name)
            decode = decode_ceiling(video, args.streams)
            piped = pipeline(video, args.streams, runner, args.batch, args.workers, Path(tmp) / f"out-{i}.jsonl",
                             args.tracking, args.encoding, args.loop)
            rounds.append({"decode_only": decode, "pipeline": piped, "ratio": piped["fps"] / decode["fps"]})
    median_round = sorted(rounds, key=lambda r: r["ratio"])[(len(rounds) - 1) // 2]  # the lower one of an even count
    report["rounds"] = [{"decode_fps": r["decode_only"]["fps"], "pipeline_fps": r["pipeline"]["fps"],
                         "ratio": r["ratio"], "exit": r["pipeline"]["exit"]} for r in rounds]
    report["decode_only"], report["pipeline"] = median_round["decode_only"], median_round["pipeline"]
    report["pipeline_vs_decode"] = median_round["ratio"]
    report["cpu_beyond_decode"] = cpu_beyond_decode(report["decode_only"], report["pipeline"])
    report["postprocess"] = [postprocess(k, height, width) for k in ks]
    report["postprocess_full_frame_reference"] = [postprocess_full_frame(k, height, width) for k in ks]
    _print(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["exit"] == 0 for r in report["rounds"]) else 1


def cpu_beyond_decode(decode: dict[str, Any], piped: dict[str, Any]) -> dict[str, float]:
    """Where the pipeline's process CPU per frame beyond the decode ceiling's goes (ms/frame):
    ``decode thread`` (its handoff to the loop: the pipeline's decode stage minus the decode
    ceiling's thread CPU), each other stage, and ``rest`` — event loop and batching outside the
    stages, thread wake-ups, the sink's writer thread, a real model's own threads (PyTorch's
    intra-op pool), page faults and system time."""
    stages = piped["stage_cpu_ms_per_frame"]
    parts = {"decode thread": stages["decode"] - decode["thread_cpu_ms_per_frame"]}
    parts.update({stage: ms for stage, ms in stages.items() if stage != "decode"})
    total = piped["process_cpu_ms_per_frame"] - decode["process_cpu_ms_per_frame"]
    return {"total": total, **parts, "rest": total - sum(parts.values())}


def _print(r: dict[str, Any]) -> None:
    d, p = r["decode_only"], r["pipeline"]
    w, h = r["size"]
    print(f"{r['streams']} streams of {w}x{h} H.264, runner {r['runner']}, batch {r['batch']}, "
          f"{r['postprocess_workers']} postprocess workers, tracking {'on' if r['tracking'] else 'off'}, "
          f"masks {r['encoding']}, {r['event_loop']} event loop")
    for i, rnd in enumerate(r["rounds"], 1):
        print(f"round {i}: decode only {rnd['decode_fps']:6.1f}, pipeline {rnd['pipeline_fps']:6.1f} frames/s "
              f"= {rnd['ratio']:.2f} x")
    ratios = [rnd["ratio"] for rnd in r["rounds"]]
    print(f"median of {len(ratios)} rounds: pipeline = {r['pipeline_vs_decode']:.2f} x decode only "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f}); the median round:")
    print(f"decode only : {d['fps']:7.1f} frames/s  ({d['frames']} frames, process CPU "
          f"{d['process_cpu_ms_per_frame']:.1f} ms/frame, {d['minor_faults_per_frame']:.0f} page faults/frame)")
    print(f"pipeline    : {p['fps']:7.1f} frames/s  ({p['frames']} frames published, exit {p['exit']}, process CPU "
          f"{p['process_cpu_ms_per_frame']:.1f} ms/frame, {p['minor_faults_per_frame']:.0f} page faults/frame) "
          f"= {r['pipeline_vs_decode']:.2f} x decode only")
    if "model_only" in r:
        m = r["model_only"]
        print(f"model only  : {m['fps']:7.1f} frames/s at batch {m['batch']}; pipeline = "
              f"{p['fps'] / m['fps']:.2f} x model only")
    print("  stage thread CPU ms/frame: " + ", ".join(f"{s} {ms:.2f}" for s, ms in p["stage_cpu_ms_per_frame"].items()))
    beyond = dict(r["cpu_beyond_decode"])
    total = beyond.pop("total")
    print(f"  process CPU beyond decode only: {total:+.2f} ms/frame = "
          + " + ".join(f"{part} {ms:.2f}" for part, ms in beyond.items()))
    print(f"  peak RSS {p['peak_rss_mb']:.0f} MB")
    for new, old in zip(r["postprocess"], r["postprocess_full_frame_reference"], strict=True):
        print(f"postprocess, 1 thread, {new['instances']:3d} instances: {new['ms']:7.2f} CPU ms/frame back to back, "
              f"{new['cold_ms']:.2f} with caches flooded between frames (full-frame reference {old['ms']:.1f} ms, "
              f"peak RSS +{old['peak_rss_growth_mb']:.0f} MB)")
