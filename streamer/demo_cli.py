"""``streamer demo``: the embedded default, end to end.

Runs ``streamer process`` with the demo model over the shipped sample video, writes
``OUT_DIR/sample.jsonl`` and ``OUT_DIR/sample-annotated.mp4``, then scores the published masks
against the video's ground truth with COCOeval (the numbers a user can check their install by).
The JSONL keeps every instance scoring >= 0.05 (COCOeval ranks by score, so AP needs the low
ones); the annotated video draws those scoring >= 0.5, as ``streamer process`` would by default.
Instances carry track ids (``streamer process``'s tracking); the annotated video shows them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from streamer.demo import sample_ground_truth, sample_video_path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("demo", help="segment the shipped sample video with the demo model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=Path("out"), help="where results go (default: out/)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.set_defaults(func=run)


def coco_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Frame messages → COCO detection results (image id = frame index)."""
    out = []
    for msg in messages:
        for inst in msg["instances"]:
            x1, y1, x2, y2 = inst["box"]
            res = {"image_id": msg["frame"], "category_id": inst["label"], "score": inst["score"],
                   "bbox": [x1, y1, x2 - x1, y2 - y1]}
            if "mask" in inst:
                res["segmentation"] = inst["mask"]
            out.append(res)
    return out


def run(args: argparse.Namespace) -> int:
    from streamer.cli import main as cli_main
    from streamer.demo.coco import evaluate

    args.out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = args.out_dir / "sample.jsonl"
    video = args.out_dir / "sample-annotated.mp4"
    status = cli_main(["process", str(sample_video_path()), "--out", str(jsonl), "--annotate", str(video),
                       "--device", args.device, "--score-threshold", "0.05", "--annotate-threshold", "0.5"])
    if status != 0:
        return status
    messages = [json.loads(line) for line in jsonl.read_text().splitlines()]
    results = coco_results(messages)
    gt = sample_ground_truth()
    for iou_type in ("segm", "bbox"):
        st = evaluate(gt, results, iou_type)
        print(f"{iou_type}: AP {st['AP']:.3f}  AP50 {st['AP50']:.3f}  AP75 {st['AP75']:.3f} "
              f"(COCOeval against the sample video's ground truth, {len(messages)} frames)")
    tracks = {inst["track_id"] for m in messages for inst in m["instances"] if inst.get("track_id") is not None}
    print(f"tracking: {len(tracks)} track ids over {len(messages)} frames (the sample has "
          f"{len({a['track_id'] for a in gt['annotations']})} objects)")
    print(f"results: {jsonl}\nannotated video: {video}", file=sys.stderr)
    return 0
