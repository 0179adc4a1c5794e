"""Mask head: detections + features → ``Tensor[D, 28, 28]`` mask probabilities of the predicted class.

14×14 multi-level RoIAlign → ``mask_head`` (4 × 3×3 conv + ReLU, optional BN for v2) →
``mask_predictor`` (2×2 stride-2 transposed conv ``conv5_mask`` + ReLU, 1×1
``mask_fcn_logits`` with K outputs) → sigmoid, channel of the predicted label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.model.backbone import Norm2d, fuse_conv_blocks
from engines.model.config import MaskRCNNConfig


class MaskHead(nn.Sequential):
    """torchvision's ``MaskRCNNHeads`` layout: block ``i`` is ``(conv, [norm], relu)``."""

    def __init__(self, cfg: MaskRCNNConfig) -> None:
        blocks = []
        prev = cfg.fpn_channels
        d = cfg.mask_dilation
        for c in cfg.mask_layers:
            conv = nn.Conv2d(prev, c, 3, padding=d, dilation=d, bias=not cfg.mask_head_norm)
            if cfg.mask_head_norm:
                blocks.append(nn.Sequential(conv, Norm2d(c, frozen=False), nn.ReLU()))
            else:
                blocks.append(nn.Sequential(conv, nn.ReLU()))
            prev = c
        super().__init__(*blocks)

    def fuse(self) -> None:
        fuse_conv_blocks(self)


class MaskPredictor(nn.Module):
    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_fcn_logits(F.relu(self.conv5_mask(x)))


def select_class_masks(mask_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[D, K, 28, 28]`` logits, ``[D]`` labels → ``[D, 28, 28]`` probabilities of each label."""
    idx = torch.arange(mask_logits.shape[0], device=labels.device)
    return mask_logits[idx, labels].sigmoid()
