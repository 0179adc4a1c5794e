"""COCOeval (bbox + segm) of the demo model on a held-out generated set.

Loads ``demo_tv.pth`` (frozen-BN state dict, strict) into the torchvision construction of the
``demo`` preset (``tools.demo_training.build_model``) and runs it on ``--images`` 640x360 scenes
with seeds ``EVAL_SEED_BASE + i`` (disjoint from training seeds)::

    python3 -m tools.eval_demo --weights out/demo_tv.pth --images 200

A training checkpoint (``out/ckpt.pth``, BatchNorm model) can be evaluated with ``--ckpt``.
Masks are the model's probabilities thresholded at 0.5, as torchvision's reference evaluation does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from streamer.demo.coco import evaluate
from tools.demo_training import build_model
from tools.scenes.ground_truth import EVAL_SEED_BASE, GroundTruthBuilder, rle_json
from tools.scenes.shapes import generate_image


def detections_to_results(image_id: int, out: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """torchvision outputs for one image → COCO result dicts (xywh boxes, RLE masks at 0.5)."""
    boxes = out["boxes"].numpy()
    masks = (out["masks"][:, 0] > 0.5).numpy()
    results = []
    for k in range(len(boxes)):
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        results.append(
            {
                "image_id": image_id,
                "category_id": int(out["labels"][k]),
                "score": float(out["scores"][k]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "segmentation": rle_json(masks[k]),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, default=Path("out/demo_tv.pth"))
    parser.add_argument(
        "--ckpt", type=Path, default=None, help="evaluate a training checkpoint instead"
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.ckpt is not None:
        model = build_model(frozen_bn=False)
        model.load_state_dict(torch.load(args.ckpt, map_location="cpu")["model"], strict=True)
    else:
        model = build_model(frozen_bn=True)
        model.load_state_dict(
            torch.load(args.weights, map_location="cpu", weights_only=True), strict=True
        )
    model.eval()

    gt = GroundTruthBuilder()
    results: list[dict[str, Any]] = []
    t0 = time.time()
    for i in range(args.images):
        scene = generate_image(args.seed_base + i)
        image_id = gt.add(scene.masks, scene.labels, file_name=f"seed{args.seed_base + i}")
        tensor = torch.from_numpy(scene.image).permute(2, 0, 1).float().div(255)
        with torch.no_grad():
            out = model([tensor])[0]
        results += detections_to_results(image_id, out)
    infer_s = time.time() - t0
    figures = {kind: evaluate(gt.to_dict(), results, kind) for kind in ("bbox", "segm")}
    n_gt = len(gt.annotations)
    print(
        f"{args.images} images, {n_gt} instances, {len(results)} detections, {infer_s / args.images * 1000:.0f} ms/image"
    )
    for kind, stats in figures.items():
        print(f"{kind:5s} " + " ".join(f"{k}={v:.3f}" for k, v in stats.items()))
    if args.json is not None:
        summary = {
            "images": args.images,
            "seed_base": args.seed_base,
            "instances": n_gt,
            "ms_per_image": round(infer_s / args.images * 1000, 1),
            **figures,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
