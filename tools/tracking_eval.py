"""Scoring published track ids against the demo generator's ground truth with ``motmetrics``.

A development tool (not in the installed package), shared by ``tools.eval_tracking`` and the
tests; ``motmetrics`` (extra ``test``) is imported when scoring::

    gt = ground_truth(coco)                                 # from tools.scenes.video.generate_video
    acc = accumulate(gt, [(frame_index, message), ...])     # frame messages with "track_id"
    summary = summarize([acc], ["video"])                   # pandas DataFrame, row "OVERALL"

Hypotheses are the published instances with a non-null ``track_id``; a match needs box IoU >=
``MIN_IOU``. Ground-truth instances under ``MIN_AREA`` visible pixels (as in the detection
evaluation, :mod:`tools.matching`) are "don't care": left out, together with the
hypotheses that match only them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.tracking import box_iou
from tools.matching import MIN_AREA

MIN_IOU = 0.5
METRICS = ["idf1", "idp", "idr", "mota", "num_switches", "num_false_positives", "num_misses",
           "num_objects", "mostly_tracked", "num_unique_objects", "num_frames"]


@dataclass(frozen=True)
class FrameTruth:
    """The ground truth of one frame."""

    ids: npt.NDArray[np.int64]
    """``[G]`` track ids."""
    boxes: npt.NDArray[np.float64]
    """``[G, 4]`` ``(x1, y1, x2, y2)`` px of the visible part."""
    ignore: npt.NDArray[np.bool_]
    """``[G]`` don't care: fewer than ``MIN_AREA`` visible pixels."""


def ground_truth(coco: dict[str, Any]) -> dict[int, FrameTruth]:
    """Frame index (COCO image id) → its :class:`FrameTruth` (annotations need ``track_id``)."""
    per: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in coco["images"]}
    for a in coco["annotations"]:
        per[a["image_id"]].append(a)
    out = {}
    for image_id, anns in per.items():
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                         dtype=np.float64).reshape(-1, 4)
        out[image_id] = FrameTruth(np.array([a["track_id"] for a in anns], dtype=np.int64), boxes,
                                   np.array([a["area"] < MIN_AREA for a in anns], dtype=bool))
    return out


def hypotheses(message: dict[str, Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The tracked instances of a frame message: ids ``[H]`` and boxes ``[H, 4]``."""
    tracked = [inst for inst in message["instances"] if inst.get("track_id") is not None]
    return (np.array([inst["track_id"] for inst in tracked], dtype=np.int64),
            np.array([inst["box"] for inst in tracked], dtype=np.float64).reshape(-1, 4))


def accumulate(gt: dict[int, FrameTruth], frames: Iterable[tuple[int, dict[str, Any]]]) -> Any:
    """A ``motmetrics.MOTAccumulator`` over ``frames``: (ground-truth frame index, frame message)."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for index, message in frames:
        h_ids, h_boxes = hypotheses(message)
        truth = gt[index]
        keep_gt, ign_gt = truth.boxes[~truth.ignore], truth.boxes[truth.ignore]
        only_ignored = ((box_iou(h_boxes, ign_gt).max(axis=1, initial=0) >= MIN_IOU)
                        & (box_iou(h_boxes, keep_gt).max(axis=1, initial=0) < MIN_IOU))
        h_ids, h_boxes = h_ids[~only_ignored], h_boxes[~only_ignored]
        dist = 1.0 - box_iou(keep_gt, h_boxes)
        dist[dist > 1.0 - MIN_IOU] = np.nan
        acc.update(truth.ids[~truth.ignore].tolist(), h_ids.tolist(), dist)
    return acc


def summarize(accs: list[Any], names: list[str]) -> Any:
    """motmetrics summary (a pandas DataFrame) of ``accs``, one row per name plus ``OVERALL``."""
    import motmetrics as mm

    return mm.metrics.create().compute_many(accs, metrics=METRICS, names=names, generate_overall=True)


def render(summary: Any) -> str:
    """The summary as motmetrics prints it (IDF1, MOTA, IDs, ... columns)."""
    import motmetrics as mm

    return str(mm.io.render_summary(summary, formatters=mm.metrics.create().formatters,
                                    namemap=mm.io.motchallenge_metric_names))
