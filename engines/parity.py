"""Parity between two runs of a model on the same frames (ours vs torchvision, engine vs PyTorch).

Two layers:

* **Instance matching** (:func:`match_instances`, :func:`compare`): each reference instance,
  in decreasing score order, is paired with the unpaired candidate of the same label with the
  highest box IoU, if that IoU >= ``min_box_iou``. A pair *agrees* when also |Δbox| <=
  ``max_box_delta`` px (every coordinate), |Δscore| <= ``max_score_delta`` and the pasted masks
  have IoU >= ``min_mask_iou`` (the issue-10 matching rule). :class:`ParityStats` sums this.

* **The gate** (:func:`judge_frame`, :class:`GateStats`): does the candidate compute the same
  *function* as the reference, up to float noise? Counting agreeing instances cannot answer
  that: Mask R-CNN's NMS stages (RPN NMS at IoU 0.7, pre/post top-k, class-wise NMS at 0.5,
  the 0.05 score threshold, the 100-detection cap) turn a rounding difference into a different
  instance set wherever two overlapping boxes are near-tied. With calibrated R50 weights at
  800/1333, torchvision against itself on another thread count agrees on only ~90 % of the
  instances; an FP16 engine, ONNX Runtime, folded batch norms all land near there. A fixed
  pass mark is either chaos-sensitive (99 %: refuses every real model) or blind (80 %).

  So the gate first measures, on the same frames, which reference instances are *stable*:
  the reference model runs again with its weights perturbed (every weight tensor scaled by
  ``1 + rel * N(0, 1)``, ``rel`` = 1e-6 in fp32, i.e. ~10 ulps: a larger disturbance than
  any float-noise candidate we judge) under ``k`` seeds, and a reference instance is stable
  when every perturbed run reproduces it by the full matching rule. Instances near an NMS
  tie, a threshold or the cap drop out; what remains is what the model computes robustly.
  The candidate must then reproduce >= ``min_stable_agreed`` (95 %) of the stable instances,
  and the masks of the stable instances it pairs must have mean IoU >= ``min_mean_mask_iou``.
  A real bug (pixels shifted by RoIAlign's half-pixel offset, a wrong FPN level, BGR input,
  a wrong anchor, a moved mask threshold) changes boxes, scores or masks of stable and
  chaotic instances alike, so it fails by a wide margin, while float noise passes with room.
  If fewer than ``min_stable_share`` of the reference instances are stable, the frames cannot
  judge the candidate and the gate fails saying so (more frames, or a calmer model, help).
  The perturbed runs' own agreement (the noise floor) is reported next to the candidate's.
  Mutation tests (``tests/build_engine/test_parity_gate.py``) prove both sides.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engines.runner import Detections


@dataclass(frozen=True)
class Tolerances:
    """The matching rule of one instance pair, plus the legacy whole-run pass mark ``min_matched``."""

    min_matched: float = 0.99
    min_box_iou: float = 0.99
    max_box_delta: float = 0.5
    max_score_delta: float = 1e-3
    min_mask_iou: float = 0.97


@dataclass(frozen=True)
class GateMarks:
    """What the gate demands (see the module docstring)."""

    min_stable_agreed: float = 0.95
    """Share of the stable reference instances the candidate must reproduce."""
    min_stable_share: float = 0.5
    """Share of the reference instances that must be stable for the frames to judge anything."""
    min_mean_mask_iou: float = 0.99
    """Mean mask IoU over the stable instances the candidate pairs."""
    perturbation: float = 1e-6
    """Relative weight noise of the perturbed reference runs."""
    perturbed_runs: int = 2
    """Number of perturbed reference runs (seeds 1..k)."""


@dataclass(frozen=True)
class InstanceMatch:
    """Per reference instance (``[R]`` arrays) of one frame: its pair and how close it is."""

    paired: npt.NDArray[np.int64]
    """Candidate index, -1 = none (no same-label box with IoU >= ``min_box_iou``)."""
    box_delta: npt.NDArray[np.float64]
    """Largest coordinate difference in px (0 when unpaired)."""
    score_delta: npt.NDArray[np.float64]
    mask_iou: npt.NDArray[np.float64]
    """IoU of the pasted masks (1 when unpaired or masks not compared)."""
    agrees: npt.NDArray[np.bool_]
    """Paired and within every tolerance."""


def box_iou_matrix(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """``[A, B]`` IoU of xyxy boxes ``a[A, 4]`` and ``b[B, 4]``."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    lt = np.maximum(a64[:, None, :2], b64[None, :, :2])
    rb = np.minimum(a64[:, None, 2:], b64[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a64[:, 2:] - a64[:, :2]).prod(-1)
    area_b = (b64[:, 2:] - b64[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def mask_iou(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """IoU of two ``bool[H, W]`` masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def match_instances(ref: Detections, cand: Detections, tol: Tolerances | None = None,
                    masks: bool = True) -> InstanceMatch:
    """Pair ``cand``'s instances with ``ref``'s (one frame) and measure each pair."""
    tol = tol or Tolerances()
    r = len(ref)
    paired = np.full(r, -1, dtype=np.int64)
    box_delta, score_delta, ious = np.zeros(r), np.zeros(r), np.ones(r)
    if r and len(cand):
        iou = box_iou_matrix(ref.boxes, cand.boxes)
        iou[ref.labels[:, None] != cand.labels[None, :]] = -1
        taken = np.zeros(len(cand), dtype=bool)
        for i in np.argsort(-ref.scores, kind="stable"):
            row = np.where(taken, -1, iou[i])
            j = int(row.argmax())
            if row[j] >= tol.min_box_iou:
                taken[j] = True
                paired[i] = j
        ri = np.flatnonzero(paired >= 0)
        ci = paired[ri]
        box_delta[ri] = np.abs(ref.boxes[ri].astype(np.float64) - cand.boxes[ci]).max(1) if len(ri) else 0
        score_delta[ri] = np.abs(ref.scores[ri].astype(np.float64) - cand.scores[ci])
        if masks and len(ri):
            rm, cm = ref.paste(), cand.paste()
            ious[ri] = [mask_iou(rm[i], cm[j]) for i, j in zip(ri, ci, strict=True)]
    agrees = ((paired >= 0) & (box_delta <= tol.max_box_delta) & (score_delta <= tol.max_score_delta)
              & (ious >= tol.min_mask_iou))
    return InstanceMatch(paired, box_delta, score_delta, ious, agrees)


@dataclass
class ParityStats:
    """One comparison summed over frames. ``matched``: pairs (same label, box IoU); ``agreed``:
    pairs within every tolerance (the issue-10 matching rule)."""

    reference: int = 0
    candidate: int = 0
    matched: int = 0
    max_box_delta: float = 0.0
    max_score_delta: float = 0.0
    min_mask_iou: float = 1.0
    mask_ok: int = 0
    """Matched instances whose mask IoU >= the tolerance."""
    mask_iou_sum: float = 0.0
    agreed: int = 0

    @property
    def matched_fraction(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    @property
    def agreed_fraction(self) -> float:
        return self.agreed / self.reference if self.reference else 1.0

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
                           self.mask_iou_sum + o.mask_iou_sum, self.agreed + o.agreed)

    def failures(self, tol: Tolerances) -> list[str]:
        """Why this comparison misses the strict pass marks of ``tol`` (empty = pass). For runs
        that must be nearly bit-equal (batched vs single frame, the same graph twice); runs
        that differ by float noise are judged by the gate instead."""
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
        return (f"agreed {self.agreed}/{self.reference} ({self.agreed_fraction:.2%}), paired {self.matched} "
                f"({self.matched_fraction:.2%}), max |Δbox| {self.max_box_delta:.2e} px, max |Δscore| "
                f"{self.max_score_delta:.2e}, mask IoU mean {self.mean_mask_iou:.4f} / min {self.min_mask_iou:.4f} "
                f"({self.mask_ok_fraction:.2%} >= 0.97)")

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "matched_fraction": self.matched_fraction, "mask_ok_fraction": self.mask_ok_fraction,
                "mean_mask_iou": self.mean_mask_iou, "agreed_fraction": self.agreed_fraction}


def compare(ref: Detections, cand: Detections, tol: Tolerances | None = None, masks: bool = True) -> ParityStats:
    """Match ``cand`` against ``ref`` (one frame) and sum the differences (see :func:`match_instances`)."""
    m = match_instances(ref, cand, tol, masks)
    ok = m.paired >= 0
    n = int(ok.sum())
    tol = tol or Tolerances()
    return ParityStats(
        reference=len(ref), candidate=len(cand), matched=n,
        max_box_delta=float(m.box_delta[ok].max()) if n else 0.0,
        max_score_delta=float(m.score_delta[ok].max()) if n else 0.0,
        min_mask_iou=float(m.mask_iou[ok].min()) if n else 1.0,
        mask_ok=int((m.mask_iou[ok] >= tol.min_mask_iou).sum()), mask_iou_sum=float(m.mask_iou[ok].sum()),
        agreed=int(m.agrees.sum()))


def compare_all(refs: Sequence[Detections], cands: Sequence[Detections], tol: Tolerances | None = None) -> ParityStats:
    """:func:`compare` over frames, merged."""
    total = ParityStats()
    for r, c in zip(refs, cands, strict=True):
        total = total.merge(compare(r, c, tol))
    return total


# --------------------------------------------------------------------------- the gate
@dataclass
class GateStats:
    """The gate's measurements, summed over frames (see the module docstring)."""

    reference: int = 0
    candidate: int = 0
    stable: int = 0
    """Reference instances every perturbed reference run reproduces."""
    stable_agreed: int = 0
    """Stable instances the candidate reproduces (full matching rule)."""
    stable_unpaired: int = 0
    """Stable instances with no same-label candidate box of IoU >= ``min_box_iou``."""
    stable_paired: int = 0
    stable_mask_iou_sum: float = 0.0
    max_box_delta: float = 0.0
    """Over the stable paired instances, px."""
    max_score_delta: float = 0.0
    agreed: int = 0
    """All reference instances the candidate reproduces (chaotic ones included)."""
    perturbed_agreed: list[int] = field(default_factory=list)
    """The same count for each perturbed reference run: the noise floor of ``agreed``."""

    @property
    def stable_share(self) -> float:
        return self.stable / self.reference if self.reference else 1.0

    @property
    def stable_agreed_fraction(self) -> float:
        return self.stable_agreed / self.stable if self.stable else 1.0

    @property
    def stable_mean_mask_iou(self) -> float:
        return self.stable_mask_iou_sum / self.stable_paired if self.stable_paired else 1.0

    @property
    def agreed_fraction(self) -> float:
        return self.agreed / self.reference if self.reference else 1.0

    @property
    def floor_fraction(self) -> float | None:
        """The lowest agreement of a perturbed reference run (None without perturbed runs)."""
        if not self.perturbed_agreed:
            return None
        return min(self.perturbed_agreed) / self.reference if self.reference else 1.0

    def merge(self, o: GateStats) -> GateStats:
        pa = ([a + b for a, b in zip(self.perturbed_agreed, o.perturbed_agreed, strict=True)]
              if self.perturbed_agreed and o.perturbed_agreed else self.perturbed_agreed or o.perturbed_agreed)
        return GateStats(self.reference + o.reference, self.candidate + o.candidate, self.stable + o.stable,
                         self.stable_agreed + o.stable_agreed, self.stable_unpaired + o.stable_unpaired,
                         self.stable_paired + o.stable_paired, self.stable_mask_iou_sum + o.stable_mask_iou_sum,
                         max(self.max_box_delta, o.max_box_delta), max(self.max_score_delta, o.max_score_delta),
                         self.agreed + o.agreed, list(pa))

    def failures(self, marks: GateMarks) -> list[str]:
        """Why the candidate fails the gate (empty = pass); each reason states the rule and the value."""
        out = []
        if self.reference and self.stable_share < marks.min_stable_share:
            out.append(f"only {self.stable}/{self.reference} reference instances ({self.stable_share:.1%}) are stable "
                       f"under a {marks.perturbation:g} relative weight perturbation (need >= "
                       f"{marks.min_stable_share:.0%}): these frames cannot judge the candidate; use more frames")
        if self.stable_agreed_fraction < marks.min_stable_agreed:
            out.append(f"the candidate reproduces {self.stable_agreed}/{self.stable} = "
                       f"{self.stable_agreed_fraction:.4f} of the stable reference instances (need >= "
                       f"{marks.min_stable_agreed}); {self.stable_unpaired} have no same-label box at IoU >= the "
                       f"tolerance, {self.stable_paired - self.stable_agreed} are paired but differ in box, score "
                       "or mask")
        if self.stable_mean_mask_iou < marks.min_mean_mask_iou:
            out.append(f"mean mask IoU over the stable paired instances {self.stable_mean_mask_iou:.4f} < "
                       f"{marks.min_mean_mask_iou}")
        return out

    def summary(self) -> str:
        floor = self.floor_fraction
        return (f"stable {self.stable}/{self.reference} ({self.stable_share:.1%}), candidate reproduces "
                f"{self.stable_agreed}/{self.stable} ({self.stable_agreed_fraction:.2%}); all instances "
                f"{self.agreed_fraction:.2%}" + (f" (perturbed-reference floor {floor:.2%})" if floor is not None
                                                else "")
                + f"; mean mask IoU {self.stable_mean_mask_iou:.4f}, max |Δbox| {self.max_box_delta:.2e} px, "
                f"max |Δscore| {self.max_score_delta:.2e}")

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "stable_share": self.stable_share, "stable_agreed_fraction":
                self.stable_agreed_fraction, "stable_mean_mask_iou": self.stable_mean_mask_iou,
                "agreed_fraction": self.agreed_fraction, "floor_fraction": self.floor_fraction}


def judge_frame(ref: Detections, perturbed: Sequence[Detections], cand: Detections,
                tol: Tolerances | None = None) -> GateStats:
    """The gate's measurements on one frame: ``perturbed`` are the perturbed reference runs' detections.

    Without perturbed runs every reference instance counts as stable (a strict gate).
    """
    tol = tol or Tolerances()
    stable = np.ones(len(ref), dtype=bool)
    perturbed_agreed = []
    for p in perturbed:
        m = match_instances(ref, p, tol)
        stable &= m.agrees
        perturbed_agreed.append(int(m.agrees.sum()))
    c = match_instances(ref, cand, tol)
    sp = stable & (c.paired >= 0)
    return GateStats(
        reference=len(ref), candidate=len(cand), stable=int(stable.sum()), stable_agreed=int((stable & c.agrees).sum()),
        stable_unpaired=int((stable & (c.paired < 0)).sum()), stable_paired=int(sp.sum()),
        stable_mask_iou_sum=float(c.mask_iou[sp].sum()),
        max_box_delta=float(c.box_delta[sp].max()) if sp.any() else 0.0,
        max_score_delta=float(c.score_delta[sp].max()) if sp.any() else 0.0,
        agreed=int(c.agrees.sum()), perturbed_agreed=perturbed_agreed)


def perturbed_copy(model: nn.Module, rel: float, seed: int) -> nn.Module:
    """A deep copy of ``model`` with every floating-point tensor ``t`` of its state dict (weights,
    biases, norm statistics; not derived buffers such as anchors) scaled elementwise by
    ``1 + rel * N(0, 1)``: float noise of a controlled size."""
    if not 0 < rel < 0.1:
        raise ValueError(f"relative perturbation must be in (0, 0.1), got {rel}")
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in out.state_dict().values():
            if t.is_floating_point() and t.dim() >= 1 and t.numel():
                noise = torch.randn(t.shape, generator=gen, dtype=torch.float64)
                t.copy_((t.double() * (1 + rel * noise.to(t.device))).to(t.dtype))
    return out
