"""torchvision's own Mask R-CNN built for one of our configs: the reference we must equal.

Needs torchvision (a test/bench dependency, imported here lazily): the runtime never imports
this module. :func:`torchvision_model` returns the ``torchvision.models.detection.MaskRCNN``
whose state dict is exactly ours (strict load), with the same pre/post-processing settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from engines.model.config import MaskRCNNConfig


def torchvision_model(cfg: MaskRCNNConfig, state_dict: Mapping[str, torch.Tensor] | None = None) -> Any:
    """The torchvision construction of ``cfg`` (eval mode), strictly loaded with ``state_dict`` if given."""
    from torch import nn
    from torchvision.models import resnet
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import (
        FastRCNNConvFCHead,
        FastRCNNPredictor,
        TwoMLPHead,
    )
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops.misc import FrozenBatchNorm2d

    norm = FrozenBatchNorm2d if cfg.backbone_norm == "frozen_bn" else nn.BatchNorm2d
    block = resnet.BasicBlock if cfg.block == "basic" else resnet.Bottleneck
    body = resnet.ResNet(block, list(cfg.layers), norm_layer=norm)
    c2 = 64 * (1 if cfg.block == "basic" else 4)
    backbone = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [c2, c2 * 2, c2 * 4, c2 * 8],
                               cfg.fpn_channels, norm_layer=nn.BatchNorm2d if cfg.fpn_norm else None)
    anchors = AnchorGenerator(cfg.anchor_sizes, cfg.aspect_ratios)
    ch = cfg.fpn_channels
    if cfg.box_head == "mlp":
        box_head: nn.Module = TwoMLPHead(ch * cfg.box_roi_size**2, cfg.box_representation)
    else:
        box_head = FastRCNNConvFCHead((ch, cfg.box_roi_size, cfg.box_roi_size), list(cfg.box_conv_layers),
                                      list(cfg.box_fc_layers), norm_layer=nn.BatchNorm2d if cfg.box_head_norm else None)
    model = MaskRCNN(
        backbone, num_classes=None, min_size=cfg.min_size, max_size=cfg.max_size,
        image_mean=list(cfg.image_mean), image_std=list(cfg.image_std),
        rpn_anchor_generator=anchors, rpn_head=RPNHead(ch, cfg.num_anchors, conv_depth=cfg.rpn_conv_depth),
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n,
        rpn_nms_thresh=cfg.rpn_nms_thresh, rpn_score_thresh=cfg.rpn_score_thresh,
        box_head=box_head, box_predictor=FastRCNNPredictor(cfg.box_out_features, cfg.num_classes),
        box_score_thresh=cfg.box_score_thresh, box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.detections_per_img, bbox_reg_weights=cfg.bbox_reg_weights,
        mask_head=MaskRCNNHeads(ch, list(cfg.mask_layers), cfg.mask_dilation,
                                norm_layer=nn.BatchNorm2d if cfg.mask_head_norm else None),
        mask_predictor=MaskRCNNPredictor(cfg.mask_layers[-1], cfg.mask_dim_reduced, cfg.num_classes),
    )
    if state_dict is not None:
        model.load_state_dict(dict(state_dict), strict=True)
    return model.eval()
