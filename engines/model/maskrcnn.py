"""Mask R-CNN assembly: ``uint8`` frames → per-frame detections with 28×28 mask probabilities.

torchvision's ``GeneralizedRCNN``: preprocess → backbone → anchors → :class:`~engines.model.rpn.RPN`
→ :class:`~engines.model.roi_heads.RoIHeads` → boxes back to source pixels. Two forward modes
run these same stages; they differ only in the injected
:class:`~engines.model.selection.SelectionOps`:

* :meth:`MaskRCNN.forward` (:class:`~engines.model.selection.EagerOps`) — data-dependent
  shapes, torchvision's exact test-time pipeline.
* :meth:`MaskRCNN.forward_static` (:class:`StaticOps`) — export mode: fixed numbers of
  proposals (``rpn_post_nms_top_n`` per image), box candidates (``static_box_candidates``) and
  detections (``detections_per_img``); outputs padded, with a count per image. The valid
  detections equal the dynamic mode's as long as at most ``static_box_candidates``
  class-boxes pass the score threshold in an image (the count before NMS is returned so a
  caller can check). NMS and RoIAlign go through the ops object so the exporter can swap in
  graph nodes (ONNX ``NonMaxSuppression``, our RoIAlign plugin) without forking the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engines.model.anchors import AnchorGrid
from engines.model.backbone import Backbone
from engines.model.config import MaskRCNNConfig
from engines.model.preprocess import (
    boxes_to_source,
    normalize_resize,
    pad_to,
    padded_size,
    resized_size,
    to_float_nchw,
)
from engines.model.roi_heads import RoIHeads
from engines.model.rpn import RPN
from engines.model.selection import EagerOps, SelectionOps, StaticOps
from engines.roi_align import RoIAlignParams

__all__ = ["MaskRCNN", "RawDetections", "StaticOutputs"]


@dataclass
class RawDetections:
    """One frame's detections as tensors, boxes in source pixels, sorted by decreasing score."""

    boxes: torch.Tensor  # [D, 4]
    scores: torch.Tensor  # [D]
    labels: torch.Tensor  # [D] int64
    mask_probs: torch.Tensor  # [D, 28, 28]


@dataclass
class StaticOutputs:
    """Detections of N frames padded to ``D = detections_per_img`` (:meth:`MaskRCNN.forward_static`).

    The first ``counts[i]`` entries of frame ``i`` are its detections by decreasing score; the
    rest are zeros.
    """

    counts: torch.Tensor  # [N] int64: valid detections per frame
    boxes: torch.Tensor  # [N, D, 4] source pixels
    scores: torch.Tensor  # [N, D]
    labels: torch.Tensor  # [N, D] int64
    mask_probs: torch.Tensor  # [N, D, 28, 28]
    candidates: torch.Tensor  # [N] int64: class-boxes above the score threshold (before the cap)

    def per_frame(self) -> list[RawDetections]:
        """The valid detections of each frame."""
        return [RawDetections(self.boxes[i, :c], self.scores[i, :c], self.labels[i, :c], self.mask_probs[i, :c])
                for i, c in enumerate(self.counts.tolist())]


class MaskRCNN(nn.Module):
    """Mask R-CNN with torchvision's parameter names (``backbone.body...``, ``rpn.head...``, ``roi_heads...``).

    The stages share ``cfg`` (the same object): edit its fields in place.
    """

    def __init__(self, cfg: MaskRCNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.rpn = RPN(cfg)
        self.roi_heads = RoIHeads(cfg)
        self.anchor_grid = AnchorGrid(cfg.anchor_sizes, cfg.aspect_ratios)
        self.eval()

    @property
    def box_roi(self) -> RoIAlignParams:
        """The box pooler's RoIAlign parameters (those of :attr:`roi_heads`)."""
        return self.roi_heads.box_roi

    @box_roi.setter
    def box_roi(self, params: RoIAlignParams) -> None:
        self.roi_heads.box_roi = params

    @property
    def mask_roi(self) -> RoIAlignParams:
        """The mask pooler's RoIAlign parameters (those of :attr:`roi_heads`)."""
        return self.roi_heads.mask_roi

    @mask_roi.setter
    def mask_roi(self, params: RoIAlignParams) -> None:
        self.roi_heads.mask_roi = params

    def fuse_norms(self, dtype: torch.dtype = torch.float64) -> MaskRCNN:
        """Fold all batch norms into convolutions (inference only; irreversible).

        ``dtype``: precision of the folding arithmetic (:func:`engines.model.backbone.fold_norm`).
        Not done by default at run time: see :class:`engines.torch_runner.TorchRunner`.
        """
        self.backbone.fuse_norms(dtype)
        self.roi_heads.fuse_norms(dtype)
        return self

    def preprocess(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``uint8[N, H, W, 3]`` → padded normalized batch ``float[N, 3, Hp, Wp]`` and the resized size."""
        c = self.cfg
        h, w = int(frames.shape[1]), int(frames.shape[2])
        size = resized_size(h, w, float(c.min_size), float(c.max_size))
        x = normalize_resize(to_float_nchw(frames), c.image_mean, c.image_std, size)
        return pad_to(x, padded_size(size[0], size[1], c.size_divisible)), size

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> list[RawDetections]:
        """``uint8[N, H, W, 3]`` RGB frames of one size → N :class:`RawDetections`."""
        return self._detect(frames, EagerOps()).per_frame()

    @torch.no_grad()
    def forward_static(self, frames: torch.Tensor, ops: StaticOps | None = None) -> StaticOutputs:
        """Fixed-shape forward (see the module docstring). ``frames``: ``uint8[N, H, W, 3]``."""
        return self._detect(frames, ops or StaticOps())

    def _detect(self, frames: torch.Tensor, ops: SelectionOps) -> StaticOutputs:
        x, size = self.preprocess(frames)
        feats = self.backbone(x)
        anchors = self.anchor_grid([tuple(f.shape[-2:]) for f in feats], tuple(x.shape[-2:]))
        proposals = self.rpn(feats, anchors, size, ops)
        detections, mask_probs, candidates = self.roi_heads(feats, proposals, size, ops)
        source_hw = (int(frames.shape[1]), int(frames.shape[2]))
        boxes = boxes_to_source(detections.boxes.reshape(-1, 4), size, source_hw).view_as(detections.boxes)
        return StaticOutputs(detections.counts, boxes, detections.scores, detections.groups, mask_probs, candidates)
