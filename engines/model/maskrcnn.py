"""Mask R-CNN assembly: ``uint8`` frames → per-frame detections with 28×28 mask probabilities.

Two forward modes over the same modules and pure functions:

* :meth:`MaskRCNN.forward` — dynamic shapes, torchvision's exact test-time pipeline.
* :meth:`MaskRCNN.forward_static` — export mode: fixed numbers of proposals
  (``rpn_post_nms_top_n`` per image), box candidates (``static_box_candidates``) and
  detections (``detections_per_img``); outputs padded, with a count per image. The valid
  detections equal the dynamic mode's as long as at most ``static_box_candidates``
  class-boxes pass the score threshold in an image (the count before NMS is returned so a
  caller can check). NMS and RoIAlign go through :class:`StaticOps` so the exporter can swap
  in graph nodes (ONNX ``NonMaxSuppression``, our RoIAlign plugin) without forking the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engines.model import box_ops
from engines.model.anchors import AnchorGrid
from engines.model.backbone import Backbone, fuse_conv_blocks
from engines.model.box_head import Predictor, decode_class_boxes, make_box_head, select_detections
from engines.model.config import MaskRCNNConfig
from engines.model.mask_head import MaskHead, MaskPredictor, select_class_masks
from engines.model.preprocess import (
    boxes_to_source,
    normalize_resize,
    pad_to,
    padded_size,
    resized_size,
    to_float_nchw,
)
from engines.model.rpn import RPNHead, select_proposals
from engines.roi_align import RoIAlignParams, boxes_to_rois, multilevel_roi_align


@dataclass
class RawDetections:
    """One frame's detections as tensors, boxes in source pixels, sorted by decreasing score."""

    boxes: torch.Tensor  # [D, 4]
    scores: torch.Tensor  # [D]
    labels: torch.Tensor  # [D] int64
    mask_probs: torch.Tensor  # [D, 28, 28]


@dataclass
class StaticOutputs:
    """Padded outputs of :meth:`MaskRCNN.forward_static` (``D = detections_per_img``)."""

    counts: torch.Tensor  # [N] int64: valid detections per frame
    boxes: torch.Tensor  # [N, D, 4] source pixels
    scores: torch.Tensor  # [N, D]
    labels: torch.Tensor  # [N, D] int64
    mask_probs: torch.Tensor  # [N, D, 28, 28]
    candidates: torch.Tensor  # [N] int64: class-boxes above the score threshold (before the cap)


class RPN(nn.Module):
    def __init__(self, cfg: MaskRCNNConfig) -> None:
        super().__init__()
        self.head = RPNHead(cfg.fpn_channels, cfg.num_anchors, cfg.rpn_conv_depth)


class RoIHeads(nn.Module):
    def __init__(self, cfg: MaskRCNNConfig) -> None:
        super().__init__()
        self.box_head = make_box_head(cfg)
        self.box_predictor = Predictor(cfg.box_out_features, cfg.num_classes)
        self.mask_head = MaskHead(cfg)
        self.mask_predictor = MaskPredictor(cfg.mask_layers[-1], cfg.mask_dim_reduced, cfg.num_classes)


class StaticOps:
    """Fixed-shape NMS and RoIAlign used by :meth:`MaskRCNN.forward_static` (eager versions)."""

    def nms(self, boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor,
            iou_threshold: float, max_out: int, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched group-wise NMS over the ``valid`` boxes of each image.

        Args: ``boxes[N, M, 4]``, ``scores[N, M]``, ``groups[N, M]`` (class or level, in
        ``[0, num_groups)``; graph versions use ``num_groups`` as the class dimension), ``valid[N, M]``.
        Returns: kept indices ``Tensor[N, max_out]`` by decreasing score (padded with 0) and
        ``counts[N]``.
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


class MaskRCNN(nn.Module):
    """Mask R-CNN with torchvision's parameter names (``backbone.body...``, ``rpn.head...``, ``roi_heads...``)."""

    def __init__(self, cfg: MaskRCNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.rpn = RPN(cfg)
        self.roi_heads = RoIHeads(cfg)
        self.anchor_grid = AnchorGrid(cfg.anchor_sizes, cfg.aspect_ratios)
        roi = dict(sampling_ratio=cfg.roi_sampling_ratio, aligned=cfg.roi_aligned, min_level=2, max_level=5)
        self.box_roi = RoIAlignParams(output_size=cfg.box_roi_size, **roi)  # type: ignore[arg-type]
        self.mask_roi = RoIAlignParams(output_size=cfg.mask_roi_size, **roi)  # type: ignore[arg-type]
        self.eval()

    def fuse_norms(self, dtype: torch.dtype = torch.float64) -> MaskRCNN:
        """Fold all batch norms into convolutions (inference only; irreversible).

        ``dtype``: precision of the folding arithmetic (:func:`engines.model.backbone.fold_norm`).
        Not done by default at run time: see :class:`engines.torch_runner.TorchRunner`.
        """
        self.backbone.fuse_norms(dtype)
        for m in (self.roi_heads.box_head, self.roi_heads.mask_head):
            if isinstance(m, nn.Sequential):  # the conv heads of v2: (conv, norm, relu) blocks
                fuse_conv_blocks(m, dtype)
        return self

    def preprocess(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``uint8[N, H, W, 3]`` → padded normalized batch ``float[N, 3, Hp, Wp]`` and the resized size."""
        c = self.cfg
        h, w = int(frames.shape[1]), int(frames.shape[2])
        size = resized_size(h, w, float(c.min_size), float(c.max_size))
        x = normalize_resize(to_float_nchw(frames), c.image_mean, c.image_std, size)
        return pad_to(x, padded_size(size[0], size[1], c.size_divisible)), size

    def _rpn(self, feats: list[torch.Tensor], padded: tuple[int, int]) -> tuple[
            list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = self.rpn.head(feats)
        anchors = self.anchor_grid([tuple(f.shape[-2:]) for f in feats], padded)
        return logits, deltas, anchors

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> list[RawDetections]:
        """``uint8[N, H, W, 3]`` RGB frames of one size → N :class:`RawDetections`."""
        h, w = int(frames.shape[1]), int(frames.shape[2])
        x, size = self.preprocess(frames)
        feats = self.backbone(x)
        logits, deltas, anchors = self._rpn(feats, tuple(x.shape[-2:]))  # type: ignore[arg-type]
        n = x.shape[0]
        proposals = select_proposals(logits, deltas, anchors, [size] * n, self.cfg)
        roi_feats = feats[:4]
        pooled = multilevel_roi_align(roi_feats, boxes_to_rois(proposals), self.box_roi)
        class_logits, box_deltas = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        boxes, scores = decode_class_boxes(class_logits, box_deltas, torch.cat(proposals), self.cfg)
        dets = []
        for b, s in zip(boxes.split([len(p) for p in proposals]), scores.split([len(p) for p in proposals]),
                        strict=True):
            dets.append(select_detections(b, s, size, self.cfg))
        det_boxes = [d[0] for d in dets]
        mask_feats = multilevel_roi_align(roi_feats, boxes_to_rois(det_boxes), self.mask_roi)
        mask_logits = self.roi_heads.mask_predictor(self.roi_heads.mask_head(mask_feats))
        probs = select_class_masks(mask_logits, torch.cat([d[2] for d in dets])).split([len(b) for b in det_boxes])
        return [
            RawDetections(boxes_to_source(b, size, (h, w)), s, lab, p)
            for (b, s, lab), p in zip(dets, probs, strict=True)
        ]

    @torch.no_grad()
    def forward_static(self, frames: torch.Tensor, ops: StaticOps | None = None) -> StaticOutputs:
        """Fixed-shape forward (see the module docstring). ``frames``: ``uint8[N, H, W, 3]``."""
        from engines.model.static_select import static_detections, static_proposals

        ops = ops or StaticOps()
        c = self.cfg
        h, w = int(frames.shape[1]), int(frames.shape[2])
        x, size = self.preprocess(frames)
        feats = self.backbone(x)
        logits, deltas, anchors = self._rpn(feats, tuple(x.shape[-2:]))  # type: ignore[arg-type]
        props, prop_valid = static_proposals(logits, deltas, anchors, size, c, ops)  # [N, P, 4], [N, P]
        n, p = props.shape[:2]
        batch_idx = torch.arange(n, device=x.device, dtype=props.dtype)[:, None].expand(n, p).reshape(-1, 1)
        rois = torch.cat([batch_idx, props.reshape(-1, 4)], 1)
        pooled = ops.roi_align(feats[:4], rois, self.box_roi)
        class_logits, box_deltas = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        boxes, scores = decode_class_boxes(class_logits, box_deltas, rois[:, 1:], c)
        det = static_detections(boxes.view(n, p, -1, 4), scores.view(n, p, -1), prop_valid, size, c, ops)
        d = det.boxes.shape[1]
        det_batch = torch.arange(n, device=x.device, dtype=props.dtype)[:, None].expand(n, d).reshape(-1, 1)
        mask_rois = torch.cat([det_batch, det.boxes.reshape(-1, 4)], 1)
        mask_logits = self.roi_heads.mask_predictor(self.roi_heads.mask_head(ops.roi_align(feats[:4], mask_rois,
                                                                                         self.mask_roi)))
        probs = select_class_masks(mask_logits, det.labels.reshape(-1)).view(n, d, *mask_logits.shape[-2:])
        src_boxes = boxes_to_source(det.boxes.reshape(-1, 4), size, (h, w)).view(n, d, 4)
        return StaticOutputs(det.counts, src_boxes, det.scores, det.labels, probs, det.candidates)
