"""Speed cost of not folding batch norms: our runner unfolded (the default) vs folded, interleaved.

    python3 tests/measure_fold_speed.py [--model PATH] [--frames 4] [--repeats 3]

Same frames (the sample video), same thread count, runs interleaved (unfolded, folded, ...) so
that machine load hits both alike; prints median ms/frame of each and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from engines.torch_runner import TorchRunner
from engines.weights import load_model
from streamer.bench_cli import read_frames
from streamer.demo import sample_video_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--input", default=None, help="video (default: the sample video)")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    frames = read_frames(Path(a.input) if a.input else sample_video_path(), a.frames)
    runners = {fold: TorchRunner(load_model(a.model).model, [], "m", fuse=fold) for fold in (False, True)}
    for r in runners.values():
        r.infer(frames[:1])  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(a.repeats):
        for f in frames:
            for fold, r in runners.items():
                t0 = time.perf_counter()
                r.infer([f])
                times[fold].append(time.perf_counter() - t0)
    un, fo = statistics.median(times[False]), statistics.median(times[True])
    print(f"threads {torch.get_num_threads()}, {len(frames)} frames x {a.repeats}: unfolded {un * 1e3:.1f} ms/frame, "
          f"folded {fo * 1e3:.1f} ms/frame, unfolded/folded {un / fo:.3f}")


if __name__ == "__main__":
    main()
