"""Tracker cost per frame: ``Tracker.update`` plus adding the ids to the message, N moving instances.

Synthetic, deterministic input: ``--instances`` discs (20..80 px, 640x360 frame, 25 fps) moving
at 20..100 px/s and bouncing off the edges, so they cross and overlap (the mask-IoU path runs
wherever boxes are ambiguous), with box-local masks as the pipeline hands them over; scores
0.5..1 with a tenth at 0.3, so both association passes run. Prints milliseconds per frame
over ``--frames`` after a warm-up: wall time (median, 95th percentile) and thread CPU time (mean;
steadier on a shared machine)::

    python3 -m tools.bench_tracking --instances 20 --frames 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from engines.masks import BoxMask
from engines.runner import Detections
from streamer.frames import Frame
from streamer.messages import MessageSpec, frame_result
from streamer.tracking import Tracker
from streamer.tracking_config import TrackingConfig
from streamer.tracking_pipeline import track_result

H, W, FPS = 360, 640, 25.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instances", type=int, default=20)
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=50)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    n = args.instances
    size = rng.uniform(20, 80, n)
    pos = np.stack([rng.uniform(40, W - 40, n), rng.uniform(40, H - 40, n)], axis=1)
    vel = rng.uniform(20, 100, n)[:, None] * np.stack([np.cos(a := rng.uniform(0, 2 * np.pi, n)), np.sin(a)], 1)
    scores = np.sort(rng.uniform(0.5, 1.0, n))[::-1].astype(np.float32)
    scores[-max(1, n // 10):] = 0.3  # a tenth of them low-score: the second pass runs too
    discs = {}
    spec = MessageSpec(("__background__", "thing"), frozenset({"none"}), 0.5, live=False)
    tracker = Tracker(TrackingConfig(), "bench")
    times, cpu_times = [], []
    for i in range(args.frames + args.warmup):
        t = i / FPS
        pos += vel / FPS
        bounce = (pos < 0) | (pos > [W, H])
        vel[bounce] *= -1
        boxes = np.concatenate([pos - size[:, None] / 2, pos + size[:, None] / 2], axis=1)
        boxes = np.clip(boxes, 0, [W, H, W, H]).astype(np.float32)
        masks = []
        for b in boxes:
            x0, y0, x1, y1 = np.rint(b).astype(int).tolist()
            key = (y1 - y0, x1 - x0)
            if key not in discs:
                yy, xx = np.mgrid[:key[0], :key[1]]
                discs[key] = ((yy - key[0] / 2) ** 2 / max(key[0] / 2, 1) ** 2
                              + (xx - key[1] / 2) ** 2 / max(key[1] / 2, 1) ** 2) <= 1
            masks.append(BoxMask(x0, y0, discs[key]))
        det = Detections(boxes, scores, np.ones(n, np.int64), np.zeros((n, 28, 28), np.float32), (H, W),
                         pasted=(0.5, masks))
        frame = Frame("bench", "bench", i, t, t, t, np.zeros((0, 0, 3), np.uint8))
        result = frame_result(frame, det, spec, need_masks=True)
        start, cpu = time.perf_counter(), time.thread_time()
        track_result(tracker, frame, result, t)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.thread_time() - cpu)
    ms = np.array(times) * 1000
    print(f"{n} instances, {args.frames} frames: tracking {np.median(ms):.3f} ms/frame median, "
          f"{np.percentile(ms, 95):.3f} ms p95 (wall); {1000 * np.mean(cpu_times):.3f} ms CPU mean; "
          f"{tracker.started_total} tracks "
          f"started, {tracker.active} active at the end")


if __name__ == "__main__":
    main()
