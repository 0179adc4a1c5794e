"""Parity between two runs of a model on the same frames (e.g. ours vs torchvision, engine vs PyTorch).

Matching: each reference instance, in decreasing score order, takes the unmatched candidate
with the same label and the highest box IoU, if that IoU >= ``min_box_iou``. For matched
pairs we report the largest box-coordinate and score differences and the IoU of the pasted
(thresholded) masks. Pass: >= ``min_matched`` of the reference instances matched, and
>= ``min_matched`` of the matched ones with mask IoU >= ``min_mask_iou`` (a tiny mask whose
probabilities sit at the 0.5 threshold can flip a few of its pixels under float rounding; the
minimum is reported too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from engines.runner import Detections


@dataclass(frozen=True)
class Tolerances:
    """Pass marks (torchvision parity defaults from the project's acceptance criteria)."""

    min_matched: float = 0.99
    min_box_iou: float = 0.99
    max_box_delta: float = 0.5
    max_score_delta: float = 1e-3
    min_mask_iou: float = 0.97


@dataclass
class ParityStats:
    reference: int = 0
    candidate: int = 0
    matched: int = 0
    max_box_delta: float = 0.0
    max_score_delta: float = 0.0
    min_mask_iou: float = 1.0
    mask_ok: int = 0
    """Matched instances whose mask IoU >= the tolerance."""
    mask_iou_sum: float = 0.0

    @property
    def matched_fraction(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    @property
    def mask_ok_fraction(self) -> float:
        return self.mask_ok / self.matched if self.matched else 1.0

    @property
    def mean_mask_iou(self) -> float:
        return self.mask_iou_sum / self.matched if self.matched else 1.0

    def merge(self, o: ParityStats) -> ParityStats:
        return ParityStats(self.reference + o.reference, self.candidate + o.candidate, self.matched + o.matched,
                           max(self.max_box_delta, o.max_box_delta), max(self.max_score_delta, o.max_score_delta),
                           min(self.min_mask_iou, o.min_mask_iou), self.mask_ok + o.mask_ok,
                           self.mask_iou_sum + o.mask_iou_sum)

    def failures(self, tol: Tolerances) -> list[str]:
        """Human-readable reasons this comparison fails ``tol`` (empty = pass)."""
        out = []
        if self.matched_fraction < tol.min_matched:
            out.append(f"matched {self.matched}/{self.reference} = {self.matched_fraction:.4f} < {tol.min_matched}")
        if self.max_box_delta > tol.max_box_delta:
            out.append(f"max |Δbox| {self.max_box_delta:.4f} px > {tol.max_box_delta}")
        if self.max_score_delta > tol.max_score_delta:
            out.append(f"max |Δscore| {self.max_score_delta:.2e} > {tol.max_score_delta}")
        if self.mask_ok_fraction < tol.min_matched:
            out.append(f"mask IoU >= {tol.min_mask_iou} for {self.mask_ok}/{self.matched} matched instances "
                       f"= {self.mask_ok_fraction:.4f} < {tol.min_matched}")
        return out

    def summary(self) -> str:
        return (f"matched {self.matched}/{self.reference} ({self.matched_fraction:.2%}), max |Δbox| "
                f"{self.max_box_delta:.2e} px, max |Δscore| {self.max_score_delta:.2e}, mask IoU mean "
                f"{self.mean_mask_iou:.4f} / min {self.min_mask_iou:.4f} ({self.mask_ok_fraction:.2%} >= 0.97)")

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "matched_fraction": self.matched_fraction, "mask_ok_fraction": self.mask_ok_fraction,
                "mean_mask_iou": self.mean_mask_iou}


def box_iou_matrix(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """``[A, B]`` IoU of xyxy boxes."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    lt = np.maximum(a64[:, None, :2], b64[None, :, :2])
    rb = np.minimum(a64[:, None, 2:], b64[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a64[:, 2:] - a64[:, :2]).prod(-1)
    area_b = (b64[:, 2:] - b64[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def mask_iou(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def compare(ref: Detections, cand: Detections, tol: Tolerances | None = None, masks: bool = True) -> ParityStats:
    """Match ``cand`` against ``ref`` (one frame) and measure the differences."""
    tol = tol or Tolerances()
    st = ParityStats(reference=len(ref), candidate=len(cand))
    if len(ref) == 0 or len(cand) == 0:
        return st
    iou = box_iou_matrix(ref.boxes, cand.boxes)
    iou[ref.labels[:, None] != cand.labels[None, :]] = -1
    taken = np.zeros(len(cand), dtype=bool)
    pairs = []
    for i in np.argsort(-ref.scores, kind="stable"):
        row = np.where(taken, -1, iou[i])
        j = int(row.argmax())
        if row[j] >= tol.min_box_iou:
            taken[j] = True
            pairs.append((int(i), j))
    st.matched = len(pairs)
    if not pairs:
        return st
    ri, ci = (np.array(x) for x in zip(*pairs, strict=True))
    st.max_box_delta = float(np.abs(ref.boxes[ri] - cand.boxes[ci]).max())
    st.max_score_delta = float(np.abs(ref.scores[ri] - cand.scores[ci]).max())
    if masks:
        rm, cm = ref.paste(), cand.paste()
        ious = [mask_iou(rm[i], cm[j]) for i, j in pairs]
        st.min_mask_iou = min(ious)
        st.mask_ok = sum(v >= tol.min_mask_iou for v in ious)
        st.mask_iou_sum = float(sum(ious))
    else:
        st.mask_ok = st.matched
        st.mask_iou_sum = float(st.matched)
    return st


def compare_all(refs: Sequence[Detections], cands: Sequence[Detections], tol: Tolerances | None = None) -> ParityStats:
    """:func:`compare` over frames, merged."""
    total = ParityStats()
    for r, c in zip(refs, cands, strict=True):
        total = total.merge(compare(r, c, tol))
    return total
