"""Box head: proposals + features → final detections (boxes, scores, labels) per image.

torchvision's ``RoIHeads`` at test time:

* 7×7 multi-level RoIAlign (``engines.roi_align``, legacy alignment, sampling ratio 2);
* ``TwoMLPHead`` (``fc6``, ``fc7`` + ReLU; v1) or ``FastRCNNConvFCHead`` (convs + BN + ReLU,
  then FC + ReLU; v2); ``FastRCNNPredictor`` (``cls_score``, ``bbox_pred``);
* class-wise decoding with weights (10, 10, 5, 5) and the ``log(1000/16)`` clamp; softmax;
* per image: clip to the resized image; drop the background column; keep ``score >
  score_thresh`` (0.05) and sides ``>= 1e-2``; class-wise NMS at 0.5; best 100.

The pooling and the order of these steps are :class:`engines.model.roi_heads.RoIHeads`;
this module holds the layers and the pure functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.model import box_ops
from engines.model.backbone import Norm2d, fuse_conv_blocks
from engines.model.config import MaskRCNNConfig
from engines.model.selection import Candidates

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


def class_candidates(
    boxes: torch.Tensor, scores: torch.Tensor, proposals_filled: torch.Tensor, image_size: tuple[int, int],
    cfg: MaskRCNNConfig,
) -> Candidates:
    """Class-wise ``boxes[N, P, K, 4]`` and softmax ``scores[N, P, K]`` of ``P`` proposal slots →
    ``M = P * (K - 1)`` candidates per image, proposal-major, grouped by class label.

    Clipped to the resized ``image_size``, background column dropped; valid where the proposal
    slot is filled, ``score > box_score_thresh`` and both sides ``>= BOX_MIN_SIZE``.
    """
    n, p, k = scores.shape
    boxes = box_ops.clip_boxes(boxes, image_size[0], image_size[1])[:, :, 1:].reshape(n, -1, 4)
    labels = torch.arange(1, k, device=scores.device).view(1, 1, -1).expand(n, p, k - 1).reshape(n, -1)
    scores = scores[:, :, 1:].reshape(n, -1)
    valid = proposals_filled[:, :, None].expand(n, p, k - 1).reshape(n, -1) & (scores > cfg.box_score_thresh)
    valid = valid & box_ops.sides_at_least(boxes, BOX_MIN_SIZE)
    return Candidates(boxes, scores, labels, valid)
