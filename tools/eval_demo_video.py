"""The demo model's end-to-end criteria (tests/streamer/test_demo_model.py) on many unseen generated videos.

Each video (seeds ``EVAL_VIDEO_SEED_BASE + i``, disjoint from every training seed) is encoded as
H.264, decoded with PyAV and run through the runner and ``streamer.messages`` exactly as ``streamer process`` does
(score >= 0.5, masks pasted at 0.5). Ground-truth instances of >= 400 px are matched greedily by mask IoU
(``tools.matching``); the figures are found / total, mean IoU of the found, classes right,
the same for shapes cut by the frame border, and the class confusion.

    python3 -m tools.eval_demo_video --videos 12                     # the shipped model file
    python3 -m tools.eval_demo_video --weights out/ft3/demo_tv.pth   # a candidate state dict
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from engines.loading import load_runner
from streamer.media import open_media
from streamer.messages import MessageSpec, frame_result
from streamer.offline import ProcessOptions
from tools.matching import MatchTally, match_frame
from tools.package_demo import package
from tools.scenes.shapes import CLASS_NAMES
from tools.scenes.video import generate_video

EVAL_VIDEO_SEED_BASE = 3_000_000
SCORE_THRESHOLD = ProcessOptions().score_threshold  # what `streamer process` publishes by default


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model file (default: the shipped demo model)")
    p.add_argument("--weights", type=Path, default=None, help="evaluate a frozen-BN state dict instead")
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--seconds", type=float, default=1.6)
    p.add_argument("--seed-base", type=int, default=EVAL_VIDEO_SEED_BASE)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.weights is not None:
            model = package(args.weights, Path(tmp) / "candidate.safetensors", source=str(args.weights))
        runner = load_runner(model)
        spec = MessageSpec(runner.info.class_names, frozenset({"none"}), SCORE_THRESHOLD, live=False)
        tally = MatchTally()
        per_video = []
        t0 = time.time()
        for i in range(args.videos):
            seed = args.seed_base + i
            path = Path(tmp) / f"v{seed}.mp4"
            gt = generate_video(path, seed=seed, seconds=args.seconds)
            video = MatchTally()
            for frame in open_media(str(path)):
                result = frame_result(frame, runner.infer([frame.image])[0], spec, need_masks=True)
                assert result.masks is not None
                anns = [a for a in gt["annotations"] if a["image_id"] == frame.index]
                matches = match_frame([mask_utils.decode(a["segmentation"]).astype(bool) for a in anns],
                                      [a["category_id"] for a in anns],
                                      [m.to_full(*frame.size) for m in result.masks],
                                      result.detections.labels.tolist())
                video.add(matches)
            tally.add(video.matches)
            s = video.summary()
            per_video.append({"seed": seed, **s})
            print(f"seed {seed}: found {s['found']}/{s['total']}, IoU {s['mean_iou']:.3f}, "
                  f"classes {s['correct']}/{s['found']} (border {s['correct_at_border']}/{s['found_at_border']}) "
                  f"[{time.time() - t0:.0f} s]", flush=True)
    s = tally.summary()
    confusion = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=int)
    for m in tally.found:
        confusion[m.gt_label, m.pred_label] += 1
    print(f"all {args.videos} videos: found {s['found']}/{s['total']} = {s['found'] / s['total']:.3f}, "
          f"mean IoU {s['mean_iou']:.3f}, classes {s['correct']}/{s['found']} = {s['correct'] / s['found']:.3f}, "
          f"at the border {s['correct_at_border']}/{s['found_at_border']}")
    print("confusion (rows ground truth, columns predicted): " + ", ".join(CLASS_NAMES[1:]))
    for g in range(1, len(CLASS_NAMES)):
        print(f"  {CLASS_NAMES[g]:8s} " + " ".join(f"{confusion[g, j]:5d}" for j in range(1, len(CLASS_NAMES))))
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": s, "videos": per_video,
                                         "confusion": confusion.tolist()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
