"""Measure our default path against torchvision's own thread-count noise floor.

For each architecture and input size: torchvision on N threads is the reference; torchvision
on 1 thread gives the noise floor (its matched fraction against the reference); then ours
with batch norms folded in float32, folded in float64, and not folded (the default).
Matching rule (``agreed``): :class:`engines.parity.Tolerances` (same label, box IoU >= 0.99,
|Δbox| <= 0.5 px, |Δscore| <= 1e-3, mask IoU >= 0.97).

    python3 -m tests.measure_parity --kinds v1,v2,r18 --sizes 480/800,800/1333 --photos 4

Needs torchvision and scikit-image (test dependencies). Weights: :func:`tools.calibrate.calibrated_model`
(calibrated random weights), calibrated at each size.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from engines.model.state_dict import model_from_state_dict
from engines.parity import compare_all
from engines.reference import torchvision_detections
from engines.runner import Detections
from engines.torch_runner import TorchRunner
from tools.calibrate import calibrated_model

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
FOLDS: dict[str, bool | str] = {"fold32": "float32", "fold64": "float64", "nofold": False}


def photos(n: int) -> list[np.ndarray]:
    """The first ``n`` of :data:`PHOTOS` as ``uint8[H, W, 3]`` (native sizes)."""
    import skimage.data

    return [np.ascontiguousarray(getattr(skimage.data, p)()[..., :3]) for p in PHOTOS[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="v1,v2,r18")
    ap.add_argument("--sizes", default="480/800,800/1333")
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="reference thread count (floor: 1 thread)")
    ap.add_argument("--variants", default="fold32,fold64,nofold")
    a = ap.parse_args()
    frames = photos(a.photos)
    print(f"| model | size | run vs torchvision ({a.threads} threads) | agreed (full rule) | paired (label, IoU) "
          "| seconds |")
    print("|---|---|---|---|---|---|")
    for kind in a.kinds.split(","):
        for size in a.sizes.split(","):
            lo, hi = (int(v) for v in size.split("/"))
            tv = calibrated_model(kind, min_size=lo, max_size=hi)
            torch.set_num_threads(a.threads)
            t0 = time.perf_counter()
            ref = torchvision_detections(tv, frames)
            t_ref = time.perf_counter() - t0
            torch.set_num_threads(1)
            t0 = time.perf_counter()
            floor = torchvision_detections(tv, frames)
            t_floor = time.perf_counter() - t0
            torch.set_num_threads(a.threads)
            rows: list[tuple[str, list[Detections], float]] = [("torchvision 1 thread (floor)", floor, t_floor)]
            for variant in a.variants.split(","):
                ours = model_from_state_dict(copy.deepcopy(tv.state_dict()), min_size=lo, max_size=hi)
                runner = TorchRunner(ours, [str(i) for i in range(ours.cfg.num_classes)], kind,
                                     fuse=FOLDS[variant])
                t0 = time.perf_counter()
                dets = runner.infer(frames)
                rows.append((f"ours {variant}", dets, time.perf_counter() - t0))
            print(f"| {kind} | {size} | torchvision {a.threads} threads (reference) | {sum(map(len, ref))} "
                  f"instances | | {t_ref:.1f} |", flush=True)
            for name, dets, secs in rows:
                st = compare_all(ref, dets)
                print(f"| {kind} | {size} | {name} | {st.agreed}/{st.reference} = {st.agreed_fraction:.4f} | "
                      f"{st.matched_fraction:.4f} | {secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
