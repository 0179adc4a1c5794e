"""Write a torchvision ``maskrcnn_resnet50_fpn`` (v1) or ``_v2`` checkpoint with calibrated random weights.

No COCO weights can be downloaded here; for timing, a calibrated random model (see
tests/calibrate.py) does the same work as a trained one: 100 detections with real masks.

    python tools/bench_checkpoint.py v1 out/r50_v1.pth && streamer bench --model out/r50_v1.pth
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tv_models import build


def main() -> None:
    kind, out = sys.argv[1], Path(sys.argv[2])
    model = build(kind, min_size=800, max_size=1333)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
