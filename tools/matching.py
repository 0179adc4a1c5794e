"""Per-frame instance matching of predicted masks to ground truth: found / IoU / class right.

Evaluation code for the demo model: its end-to-end test (tests/streamer/test_demo_model.py),
``tools.eval_demo_video`` and the tracking evaluation (:mod:`tools.tracking_eval`) score a
video this way: every ground-truth instance with at least ``min_area`` visible pixels takes the
unclaimed prediction with the highest mask IoU; it is *found* when that IoU is at least
``min_iou``, and its class is *right* when the prediction's label equals the ground truth's.
Ground-truth instances are visited in annotation order (back to front), greedily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

MIN_AREA = 400
MIN_IOU = 0.5


@dataclass(frozen=True)
class Match:
    """One ground-truth instance and its best prediction (``pred_label`` 0 when not found)."""

    gt_label: int
    pred_label: int
    iou: float
    """Mask IoU with the best unclaimed prediction (0 when there is none)."""
    found: bool
    """``iou >= min_iou``: the prediction is claimed and ``pred_label`` is its label."""
    touches_border: bool
    """The ground-truth mask reaches the frame's edge (a shape entering or leaving)."""


def match_frame(
    gt_masks: Sequence[npt.NDArray[np.bool_]],
    gt_labels: Sequence[int],
    pred_masks: Sequence[npt.NDArray[np.bool_]],
    pred_labels: Sequence[int],
    min_area: int = MIN_AREA,
    min_iou: float = MIN_IOU,
) -> list[Match]:
    """Greedy matching for one frame; masks are ``bool[H, W]`` at frame size.

    Returns one ``Match`` per ground-truth instance of at least ``min_area`` pixels, in order.
    """
    if len(gt_masks) != len(gt_labels) or len(pred_masks) != len(pred_labels):
        raise ValueError(
            f"masks and labels must pair up; got {len(gt_masks)} GT masks / {len(gt_labels)} labels, "
            f"{len(pred_masks)} predicted masks / {len(pred_labels)} labels"
        )
    taken: set[int] = set()
    matches = []
    for g, g_label in zip(gt_masks, gt_labels, strict=True):
        if int(g.sum()) < min_area:
            continue
        best, best_j = 0.0, -1
        for j, m in enumerate(pred_masks):
            if j in taken:
                continue
            iou = float(np.logical_and(g, m).sum() / max(int(np.logical_or(g, m).sum()), 1))
            if iou > best:
                best, best_j = iou, j
        border = bool(g[0].any() or g[-1].any() or g[:, 0].any() or g[:, -1].any())
        if best >= min_iou:
            taken.add(best_j)
            matches.append(Match(int(g_label), int(pred_labels[best_j]), best, True, border))
        else:
            matches.append(Match(int(g_label), 0, best, False, border))
    return matches


@dataclass
class MatchTally:
    """Running totals over frames: found / total, mean IoU of the found, classes right."""

    matches: list[Match] = field(default_factory=list)

    def add(self, matches: Sequence[Match]) -> None:
        self.matches.extend(matches)

    @property
    def found(self) -> list[Match]:
        return [m for m in self.matches if m.found]

    def summary(self) -> dict[str, float]:
        """``total``, ``found``, ``mean_iou`` (of the found), ``correct``, and the same split by border."""
        found = self.found
        out: dict[str, float] = {
            "total": len(self.matches),
            "found": len(found),
            "mean_iou": float(np.mean([m.iou for m in found])) if found else 0.0,
            "correct": sum(m.pred_label == m.gt_label for m in found),
        }
        border = [m for m in found if m.touches_border]
        out["found_at_border"] = len(border)
        out["correct_at_border"] = sum(m.pred_label == m.gt_label for m in border)
        return out
