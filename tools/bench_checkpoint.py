"""Write a torchvision ``maskrcnn_resnet50_fpn`` (v1) or ``_v2`` checkpoint with calibrated random weights.

No COCO weights can be downloaded here; for timing, a calibrated random model
(:mod:`tools.calibrate`) does the same work as a trained one: 100 detections with real masks.

    python3 -m tools.bench_checkpoint v1 out/r50_v1.pth && streamer bench --model out/r50_v1.pth

The first argument is a preset of :mod:`engines.presets` (``v1``, ``v2``, ``r18``...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from engines.presets import PRESET_NAMES
from tools.calibrate import calibrated_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=PRESET_NAMES, help="model preset")
    p.add_argument("out", type=Path, help="where the state dict (.pth) goes")
    args = p.parse_args()
    out = args.out
    model = calibrated_model(args.kind, min_size=800, max_size=1333)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
