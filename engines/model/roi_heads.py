"""RoI heads: FPN features + proposals → detections in ``detections_per_img`` slots, with mask probabilities.

torchvision's ``RoIHeads`` at test time, in order: box RoIAlign (7×7) → box head and predictor →
class-wise decoding and softmax → candidates (:func:`engines.model.box_head.class_candidates`)
→ class-wise NMS, best ``detections_per_img`` → mask RoIAlign (14×14) of the kept boxes → mask
head and predictor → sigmoid of the predicted class's channel. Layers and pure functions live
in :mod:`~engines.model.box_head` and :mod:`~engines.model.mask_head`; what differs between the
eager and the static forward is the injected :class:`~engines.model.selection.SelectionOps`.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.model.backbone import fuse_conv_blocks
from engines.model.box_head import Predictor, class_candidates, decode_class_boxes, make_box_head
from engines.model.config import MaskRCNNConfig
from engines.model.mask_head import MaskHead, MaskPredictor, select_class_masks
from engines.model.selection import Selection, SelectionOps, select
from engines.roi_align import RoIAlignParams

ROI_LEVELS = 4
"""The RoI poolers read P2–P5 (levels 2..5); the FPN's extra ``pool`` level feeds the RPN only."""


def roi_rows(selection: Selection, ops: SelectionOps) -> torch.Tensor:
    """RoIAlign's input for the rows the heads run on: ``Tensor[R, 5]`` ``(image index, x1, y1, x2, y2)``.

    The image index is a float column (the boxes' dtype), as torchvision's poolers take it.
    """
    boxes, filled = selection.boxes, selection.filled
    n, k = filled.shape
    image = torch.arange(n, device=boxes.device, dtype=boxes.dtype)[:, None].expand(n, k)
    return torch.cat([ops.rows(image, filled)[:, None], ops.rows(boxes, filled)], 1)


class RoIHeads(nn.Module):
    """Box and mask heads with torchvision's parameter names (``roi_heads.box_head...``)."""

    def __init__(self, cfg: MaskRCNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.box_head = make_box_head(cfg)
        self.box_predictor = Predictor(cfg.box_out_features, cfg.num_classes)
        self.mask_head = MaskHead(cfg)
        self.mask_predictor = MaskPredictor(cfg.mask_layers[-1], cfg.mask_dim_reduced, cfg.num_classes)
        roi = dict(sampling_ratio=cfg.roi_sampling_ratio, aligned=cfg.roi_aligned, min_level=2,
                   max_level=1 + ROI_LEVELS)
        self.box_roi = RoIAlignParams(output_size=cfg.box_roi_size, **roi)  # type: ignore[arg-type]
        self.mask_roi = RoIAlignParams(output_size=cfg.mask_roi_size, **roi)  # type: ignore[arg-type]

    def fuse_norms(self, dtype: torch.dtype) -> None:
        """Fold the norms of the v2 conv heads (``(conv, norm, relu)`` blocks) into their convolutions."""
        for m in (self.box_head, self.mask_head):
            if isinstance(m, nn.Sequential):
                fuse_conv_blocks(m, dtype)

    def forward(self, feats: list[torch.Tensor], proposals: Selection, image_size: tuple[int, int],
                ops: SelectionOps) -> tuple[Selection, torch.Tensor, torch.Tensor]:
        """FPN ``feats`` and ``P`` proposal slots per image → ``(detections, mask_probs, candidates)``.

        ``detections``: ``D = detections_per_img`` slots per image, boxes in resized-image
        pixels, ``groups`` the class labels. ``mask_probs``: ``Tensor[N, D, 2S, 2S]`` (``S =
        mask_roi_size``). ``candidates``: ``Tensor[N]`` int64, the class-boxes that passed the
        score and size tests (before :meth:`SelectionOps.shortlist`).
        """
        cfg = self.cfg
        feats = feats[:ROI_LEVELS]
        rois = roi_rows(proposals, ops)
        class_logits, box_deltas = self.box_predictor(self.box_head(ops.roi_align(feats, rois, self.box_roi)))
        boxes, scores = decode_class_boxes(class_logits, box_deltas, rois[:, 1:], cfg)
        filled = proposals.filled
        candidates = class_candidates(ops.slots(boxes, filled), ops.slots(scores, filled), filled, image_size, cfg)
        detections = select(ops.shortlist(candidates, cfg.static_box_candidates), ops, cfg.box_nms_thresh,
                            cfg.detections_per_img, int(scores.shape[1]))
        mask_feats = ops.roi_align(feats, roi_rows(detections, ops), self.mask_roi)
        mask_logits = self.mask_predictor(self.mask_head(mask_feats))
        probs = select_class_masks(mask_logits, ops.rows(detections.groups, detections.filled))
        return detections, ops.slots(probs, detections.filled), candidates.valid.sum(1)
