"""COCOeval figures (pycocotools) of detections against an in-memory COCO ground truth.

The ground-truth dict is the standard COCO instances layout (``images``, ``annotations``,
``categories``), as shipped with the sample video (:func:`streamer.demo.sample_ground_truth`) and
as the scene generator writes it (``tools.scenes.ground_truth``).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
"""Names of the 12 numbers ``COCOeval.stats`` holds, in order."""


def load_coco(gt: dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` index over an in-memory ground-truth dict (quietly)."""
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate(
    gt: dict[str, Any], results: Sequence[dict[str, Any]], iou_type: str
) -> dict[str, float]:
    """COCOeval of ``results`` (COCO result dicts) against ``gt``; ``iou_type`` is "bbox" or "segm".

    Returns the 12 standard figures named by ``STAT_NAMES`` (AP at IoU .50:.95 etc., -1 where
    undefined). Raises ``ValueError`` when ``results`` is empty (pycocotools cannot load none).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if not results:
        raise ValueError("evaluate needs at least one detection; the model returned none")
    coco_gt = load_coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(list(results))
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats, strict=True)}
