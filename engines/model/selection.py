"""Box selection per image, and the operations in which the eager and the static forward differ.

Both forwards of :class:`~engines.model.maskrcnn.MaskRCNN` run the same stages on one layout.
A selection stage (the RPN's NMS over levels, the box head's NMS over classes) turns
:class:`Candidates` ``[N, M]`` into a :class:`Selection`: ``K`` *slots* per image, the first
``counts[i]`` filled by decreasing score, zeros after. The stages take what differs between
the two forwards from an injected :class:`SelectionOps`:

============  ======================================  ===========================================
operation     :class:`EagerOps` (``forward``)         :class:`StaticOps` (``forward_static``)
============  ======================================  ===========================================
``nms``       per image, over its valid candidates    the same (``build_engine.onnx_ops.GraphOps``:
                                                      one ONNX ``NonMaxSuppression``)
``shortlist`` every candidate                         the ``static_box_candidates`` best valid
                                                      ones (TensorRT's TopK limit)
``rows``      the filled slots only                   every slot (fixed shapes)
``slots``     scatters those rows back into slots     a reshape
``roi_align`` :func:`engines.roi_align.multilevel_roi_align` (``GraphOps``: plugin or portable graph)
============  ======================================  ===========================================

Numerics that bite:

* **The heads see torchvision's batch.** A matrix product may round one row differently
  depending on how many rows it has (the kernel and its blocking are chosen by shape), so the
  eager heads run on exactly torchvision's rows: the filled slots, image-major, best first.
  The static heads run every slot; their valid rows agree with the eager ones up to that rounding.
* **NMS sees only valid candidates**, never padding: :func:`engines.model.box_ops.batched_nms`
  switches strategy above 1000 boxes and shifts groups apart by the largest coordinate of its
  input, so any extra box could change the IoU rounding. Both kernels below filter first.
* **Static shortlist.** TopK reorders the candidates by score before the NMS, so equal scores
  may be visited in another order; the static detections equal the eager ones while at most
  ``static_box_candidates`` class-boxes of an image are valid (returned as ``candidates``).
* **Masking is exact**: filled slots are multiplied by 1 (``x * 1 == x``), empty ones by 0.
* **Tracing** (``forward_static`` is exported by the TorchScript tracer): sizes derived from
  shapes go through ``int()`` so each TopK ``K`` is a constant (TensorRT needs an
  initializer); the batch size is always read from a tensor so it stays dynamic; no in-place
  ``&=`` (the exporter has none); the RoI image-index column is ``arange(n)[:, None].expand``
  (``repeat_interleave`` exports as ``OneHot``/``Tile``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from engines.model import box_ops
from engines.roi_align import RoIAlignParams, multilevel_roi_align


def gather_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[N, M, ...]`` rows picked by ``index[N, K]`` → ``Tensor[N, K, ...]``."""
    shape = index.shape + t.shape[2:]
    return t.gather(1, index.reshape(*index.shape, *([1] * (t.dim() - 2))).expand(shape))


@dataclass
class Candidates:
    """Boxes of N images that compete in one group-wise NMS per image (``M`` per image)."""

    boxes: torch.Tensor  # [N, M, 4] resized-image pixels
    scores: torch.Tensor  # [N, M]
    groups: torch.Tensor  # [N, M] int64: the RPN level, or the class label
    valid: torch.Tensor  # [N, M] bool: may be selected

    def take(self, index: torch.Tensor) -> Candidates:
        """The candidates at ``index[N, K]`` of each image."""
        return Candidates(gather_rows(self.boxes, index), self.scores.gather(1, index),
                          self.groups.gather(1, index), self.valid.gather(1, index))


@dataclass
class Selection:
    """Boxes kept per image: ``K`` slots each, the first ``counts[i]`` filled by decreasing score.

    Empty slots hold zeros: ``x * 0``, so a score may be ``-0.0`` (see :meth:`StaticOps.shortlist`).
    """

    boxes: torch.Tensor  # [N, K, 4] resized-image pixels
    scores: torch.Tensor  # [N, K]
    groups: torch.Tensor  # [N, K] int64
    filled: torch.Tensor  # [N, K] bool: slot < counts
    counts: torch.Tensor  # [N] int64


class SelectionOps(Protocol):
    """The operations in which the eager and the static forward differ (module docstring)."""

    def nms(self, boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor,
            iou_threshold: float, max_out: int, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Group-wise NMS over the ``valid`` boxes of each image.

        Args: ``boxes[N, M, 4]``, ``scores[N, M]``, ``groups[N, M]`` in ``[0, num_groups)``,
        ``valid[N, M]``. Returns kept indices ``Tensor[N, K]`` by decreasing score (``K <=
        max_out``, padded with 0) and their number per image ``counts[N]``.
        """
        ...

    def shortlist(self, candidates: Candidates, max_candidates: int) -> Candidates:
        """The candidates that enter the box head's NMS."""
        ...

    def rows(self, slots: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        """``Tensor[N, K, ...]`` slots → the rows ``Tensor[R, ...]`` the heads run on (image-major)."""
        ...

    def slots(self, rows: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`rows`: ``Tensor[R, ...]`` → ``Tensor[N, K, ...]`` (zeros in unfilled slots)."""
        ...

    def roi_align(self, feats: list[torch.Tensor], rois: torch.Tensor, params: RoIAlignParams) -> torch.Tensor:
        """Multi-level RoIAlign of ``rois[R, 5]`` ``(image index, x1, y1, x2, y2)`` → ``Tensor[R, C, S, S]``."""
        ...


def select(candidates: Candidates, ops: SelectionOps, iou_threshold: float, max_out: int,
           num_groups: int) -> Selection:
    """Group-wise NMS per image, then the best ``max_out`` in ``max_out`` slots."""
    c = candidates
    keep, counts = ops.nms(c.boxes, c.scores, c.groups, c.valid, iou_threshold, max_out, num_groups)
    kept = c.take(keep)
    boxes, scores, groups = kept.boxes, kept.scores, kept.groups
    if keep.shape[1] < max_out:  # fewer candidates than slots (graph NMS returns min(max_out, M) indices)
        pad = max_out - keep.shape[1]
        boxes, scores, groups = F.pad(boxes, (0, 0, 0, pad)), F.pad(scores, (0, pad)), F.pad(groups, (0, pad))
    filled = torch.arange(max_out, device=keep.device)[None, :] < counts[:, None]
    return Selection(boxes * filled[..., None], scores * filled, groups * filled, filled, counts)


class EagerKernels:
    """NMS and RoIAlign as eager PyTorch ops (``GraphOps`` replaces both with graph nodes)."""

    def nms(self, boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor,
            iou_threshold: float, max_out: int, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`SelectionOps.nms`, one :func:`~engines.model.box_ops.batched_nms` per image.

        Each image's NMS sees its valid boxes only, in their candidate order, exactly the input
        torchvision's per-image NMS gets; ``K = max_out`` (``num_groups`` is for graph versions).
        """
        n = boxes.shape[0]
        out = torch.zeros((n, max_out), dtype=torch.int64, device=boxes.device)
        counts = torch.zeros(n, dtype=torch.int64, device=boxes.device)
        for i in range(n):
            idx = torch.where(valid[i])[0]
            kept = idx[box_ops.batched_nms(boxes[i, idx], scores[i, idx], groups[i, idx], iou_threshold)][:max_out]
            out[i, : kept.numel()] = kept
            counts[i] = kept.numel()
        return out, counts

    def roi_align(self, feats: list[torch.Tensor], rois: torch.Tensor, params: RoIAlignParams) -> torch.Tensor:
        return multilevel_roi_align(feats, rois, params)


class EagerOps(EagerKernels):
    """Data-dependent shapes (:meth:`MaskRCNN.forward`): torchvision's test-time pipeline."""

    def shortlist(self, candidates: Candidates, max_candidates: int) -> Candidates:
        return candidates

    def rows(self, slots: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        return slots[filled]

    def slots(self, rows: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        out = rows.new_zeros((*filled.shape, *rows.shape[1:]))
        out[filled] = rows
        return out


class StaticOps(EagerKernels):
    """Fixed shapes (:meth:`MaskRCNN.forward_static`), with eager NMS and RoIAlign.

    The exporter subclasses it (``build_engine.onnx_ops.GraphOps``) to write NMS and RoIAlign
    as graph nodes without forking the model.
    """

    def shortlist(self, candidates: Candidates, max_candidates: int) -> Candidates:
        """The ``max_candidates`` best valid ones by score; invalid ones score -1 and rank last.

        The -1 is kept in the returned scores, so an empty slot of the selection that follows
        holds ``-1 * 0 = -0.0`` when its index points at an invalid candidate.
        """
        c = candidates
        k = min(max_candidates, int(c.scores.shape[1]))  # int(): a constant K when traced
        scores, index = torch.where(c.valid, c.scores, torch.full_like(c.scores, -1.0)).topk(k, dim=1)
        return Candidates(gather_rows(c.boxes, index), scores, c.groups.gather(1, index), c.valid.gather(1, index))

    def rows(self, slots: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        return slots.reshape(-1, *slots.shape[2:])

    def slots(self, rows: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        return rows.reshape(*filled.shape, *rows.shape[1:])
