"""Box head: proposals + features → final detections (boxes, scores, labels) per image.

torchvision's ``RoIHeads`` at test time:

* 7×7 multi-level RoIAlign (``engines.roi_align``, legacy alignment, sampling ratio 2);
* ``TwoMLPHead`` (``fc6``, ``fc7`` + ReLU; v1) or ``FastRCNNConvFCHead`` (convs + BN + ReLU,
  then FC + ReLU; v2); ``FastRCNNPredictor`` (``cls_score``, ``bbox_pred``);
* class-wise decoding with weights (10, 10, 5, 5) and the ``log(1000/16)`` clamp; softmax;
* per image: clip to the resized image; drop the background column; keep ``score >
  score_thresh`` (0.05) and sides ``>= 1e-2``; class-wise NMS at 0.5; best 100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.model import box_ops
from engines.model.backbone import Norm2d, fuse_conv_blocks
from engines.model.config import MaskRCNNConfig

BOX_MIN_SIZE = 1e-2


class TwoMLPHead(nn.Module):
    def __init__(self, in_features: int, representation: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation)
        self.fc7 = nn.Linear(representation, representation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class ConvFCHead(nn.Sequential):
    """torchvision's ``FastRCNNConvFCHead``: indices match its ``nn.Sequential`` layout."""

    def __init__(self, channels: int, size: int, conv_layers: tuple[int, ...], fc_layers: tuple[int, ...],
                 norm: bool) -> None:
        blocks: list[nn.Module] = []
        prev = channels
        for c in conv_layers:
            if norm:
                blocks.append(nn.Sequential(nn.Conv2d(prev, c, 3, padding=1, bias=False), Norm2d(c, frozen=False),
                                            nn.ReLU()))
            else:
                blocks.append(nn.Sequential(nn.Conv2d(prev, c, 3, padding=1), nn.ReLU()))
            prev = c
        blocks.append(nn.Flatten())
        prev = prev * size * size
        for c in fc_layers:
            blocks.append(nn.Linear(prev, c))
            blocks.append(nn.ReLU())
            prev = c
        super().__init__(*blocks)

    def fuse(self) -> None:
        fuse_conv_blocks(self)


class Predictor(nn.Module):
    """``cls_score`` (K logits) and ``bbox_pred`` (4K class-wise deltas)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


def make_box_head(cfg: MaskRCNNConfig) -> nn.Module:
    if cfg.box_head == "mlp":
        return TwoMLPHead(cfg.fpn_channels * cfg.box_roi_size**2, cfg.box_representation)
    return ConvFCHead(cfg.fpn_channels, cfg.box_roi_size, cfg.box_conv_layers, cfg.box_fc_layers, cfg.box_head_norm)


def decode_class_boxes(
    class_logits: torch.Tensor, box_deltas: torch.Tensor, proposals: torch.Tensor, cfg: MaskRCNNConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Tensor[R, K, 4]`` class-wise boxes and ``Tensor[R, K]`` softmax scores."""
    boxes = box_ops.decode_boxes(box_deltas, proposals, cfg.bbox_reg_weights)
    return boxes, F.softmax(class_logits, -1)


def select_detections(
    boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int], cfg: MaskRCNNConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: ``[R, K, 4]`` boxes, ``[R, K]`` scores → kept ``boxes[D, 4]``, ``scores[D]``, ``labels[D]``."""
    num_classes = scores.shape[-1]
    boxes = box_ops.clip_boxes(boxes, image_size[0], image_size[1])
    labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
    boxes = boxes[:, 1:].reshape(-1, 4)
    scores = scores[:, 1:].reshape(-1)
    labels = labels[:, 1:].reshape(-1)
    inds = torch.where(scores > cfg.box_score_thresh)[0]
    boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
    keep = box_ops.small_box_mask(boxes, BOX_MIN_SIZE)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    kept = box_ops.batched_nms(boxes, scores, labels, cfg.box_nms_thresh)[: cfg.detections_per_img]
    return boxes[kept], scores[kept], labels[kept]
