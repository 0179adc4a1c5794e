"""The demo model's architecture, shared by the training, fine-tuning, evaluation and packaging tools.

torchvision ``MaskRCNN`` with a ResNet-18 + FPN (128 channels) backbone, reduced box and mask
heads and anchors 16..256 px; its construction with FrozenBatchNorm2d is the one written in
docs/model-card.md and proved by tests/streamer/test_demo_model.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.misc import FrozenBatchNorm2d

from streamer.demo.shapes import CLASS_NAMES

ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5
FPN_CHANNELS = 128
REPRESENTATION = 256
MASK_LAYERS = (128, 128, 128, 128)

# Inference-time MaskRCNN keyword arguments (shipped in demo_config.json). Training changes only
# the rpn/box sampling sizes below and the transform's min/max size (training crops are fed unscaled).
INFERENCE_KWARGS: dict[str, Any] = {
    "num_classes": None,  # torchvision requires None when box/mask predictors are given
    "min_size": 360,
    "max_size": 640,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_test": 1000,
    "rpn_nms_thresh": 0.7,
    "rpn_fg_iou_thresh": 0.7,
    "rpn_bg_iou_thresh": 0.3,
    "rpn_score_thresh": 0.0,
    "box_score_thresh": 0.05,
    "box_nms_thresh": 0.5,
    "box_detections_per_img": 100,
    "box_fg_iou_thresh": 0.5,
    "box_bg_iou_thresh": 0.5,
}
TRAIN_KWARGS: dict[str, Any] = {
    "rpn_pre_nms_top_n_train": 1000,
    "rpn_post_nms_top_n_train": 500,
    "rpn_batch_size_per_image": 256,
    "rpn_positive_fraction": 0.5,
    "box_batch_size_per_image": 64,
    "box_positive_fraction": 0.25,
}


def build_model(frozen_bn: bool) -> MaskRCNN:
    """The demo architecture; ``frozen_bn`` picks FrozenBatchNorm2d (shipping) or BatchNorm2d (training)."""
    norm_layer = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    body = resnet18(weights=None, norm_layer=norm_layer)
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[64, 128, 256, 512],
        out_channels=FPN_CHANNELS,
    )
    num_classes = len(CLASS_NAMES)
    return MaskRCNN(
        backbone,
        rpn_anchor_generator=AnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS),
        box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, REPRESENTATION),
        box_predictor=FastRCNNPredictor(REPRESENTATION, num_classes),
        mask_head=MaskRCNNHeads(FPN_CHANNELS, MASK_LAYERS, 1),
        mask_predictor=MaskRCNNPredictor(MASK_LAYERS[-1], FPN_CHANNELS, num_classes),
        **INFERENCE_KWARGS,
        **TRAIN_KWARGS,
    )


def frozen_state_dict(model: MaskRCNN) -> dict[str, torch.Tensor]:
    """The BatchNorm model's weights in FrozenBatchNorm2d layout (``num_batches_tracked`` dropped).

    FrozenBatchNorm2d computes ``x * w / sqrt(var + 1e-5) + (b - mean * w / sqrt(var + 1e-5))``,
    exactly BatchNorm2d in eval mode with eps 1e-5, so the tensors carry over unchanged.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.eps != 1e-5:
            raise ValueError(f"FrozenBatchNorm2d uses eps=1e-5; a BatchNorm2d has eps={m.eps}")
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight ``xyxy`` float32 boxes ``[K, 4]`` of bool masks ``[K, H, W]`` (pixel edges, exclusive max)."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        cols = np.flatnonzero(m.any(axis=0))
        rows = np.flatnonzero(m.any(axis=1))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def training_pair(image: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                  device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One scene as torchvision's training input: image ``float[3, H, W]`` in 0..1 and its target."""
    return (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255).to(device),
            {"boxes": torch.from_numpy(mask_boxes(masks)).to(device),
             "labels": torch.from_numpy(labels).to(device),
             "masks": torch.from_numpy(masks).to(torch.uint8).to(device)})
