"""torchvision's own Mask R-CNN built for one of our configs: the reference we must equal.

Development and benchmarking only: needs torchvision, which the runtime does not (install it with
``pip install 'maskrcnn-streamer[bench]'``); torchvision is imported inside the functions, and the
runtime never imports this module. :func:`torchvision_model` returns the
``torchvision.models.detection.MaskRCNN`` whose state dict is exactly ours (strict load), with
the same pre/post-processing settings; :func:`torchvision_detections` runs it on our frames and
returns our :class:`engines.runner.Detections`.

Heads that equal torchvision's defaults for the config are left to torchvision to create, the
others are created here in the order RPN head, box head, box predictor, mask head, mask
predictor. Random weights therefore come out of one seed exactly as from torchvision's own
builders (``maskrcnn_resnet50_fpn``, ``_v2``, ``resnet_fpn_backbone`` with default heads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from engines.model.config import MaskRCNNConfig
from engines.runner import Detections

TORCHVISION_BOX_REPRESENTATION = 1024
TORCHVISION_MASK_LAYERS = (256, 256, 256, 256)
TORCHVISION_MASK_DIM_REDUCED = 256
"""torchvision's default head sizes (``FasterRCNN`` / ``MaskRCNN`` when a head is not given)."""


def torchvision_model(cfg: MaskRCNNConfig, state_dict: Mapping[str, torch.Tensor] | None = None,
                      **training: Any) -> Any:
    """The torchvision construction of ``cfg`` (eval mode), strictly loaded with ``state_dict`` if given.

    ``training``: further ``MaskRCNN`` keyword arguments that only act in training mode (sampling
    sizes such as ``box_batch_size_per_image``); the config holds everything inference uses.
    """
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
    ch = cfg.fpn_channels
    default = torchvision_defaults(cfg)
    rpn_head = None if default.rpn_head else RPNHead(ch, cfg.num_anchors, conv_depth=cfg.rpn_conv_depth)
    box_head: nn.Module | None = None
    if not default.box_head and cfg.box_head == "mlp":
        box_head = TwoMLPHead(ch * cfg.box_roi_size**2, cfg.box_representation)
    elif not default.box_head:
        box_head = FastRCNNConvFCHead((ch, cfg.box_roi_size, cfg.box_roi_size), list(cfg.box_conv_layers),
                                      list(cfg.box_fc_layers), norm_layer=nn.BatchNorm2d if cfg.box_head_norm else None)
    box_predictor = None if default.predictors else FastRCNNPredictor(cfg.box_out_features, cfg.num_classes)
    mask_head = None if default.mask_head else MaskRCNNHeads(
        ch, list(cfg.mask_layers), cfg.mask_dilation, norm_layer=nn.BatchNorm2d if cfg.mask_head_norm else None)
    mask_predictor = None if default.predictors else MaskRCNNPredictor(
        cfg.mask_layers[-1], cfg.mask_dim_reduced, cfg.num_classes)
    model = MaskRCNN(
        backbone, num_classes=cfg.num_classes if default.predictors else None,
        min_size=cfg.min_size, max_size=cfg.max_size,
        image_mean=list(cfg.image_mean), image_std=list(cfg.image_std),
        rpn_anchor_generator=AnchorGenerator(cfg.anchor_sizes, cfg.aspect_ratios), rpn_head=rpn_head,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n,
        rpn_nms_thresh=cfg.rpn_nms_thresh, rpn_score_thresh=cfg.rpn_score_thresh,
        box_head=box_head, box_predictor=box_predictor,
        box_score_thresh=cfg.box_score_thresh, box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.detections_per_img, bbox_reg_weights=cfg.bbox_reg_weights,
        mask_head=mask_head, mask_predictor=mask_predictor, **training,
    )
    if state_dict is not None:
        model.load_state_dict(dict(state_dict), strict=True)
    return model.eval()


class TorchvisionDefaults(NamedTuple):
    """Which heads of a config equal those torchvision's ``MaskRCNN`` creates when not given one."""

    rpn_head: bool
    box_head: bool
    predictors: bool
    """Both predictors: torchvision takes ``num_classes`` only when it creates both."""
    mask_head: bool


def torchvision_defaults(cfg: MaskRCNNConfig) -> TorchvisionDefaults:
    """The heads of ``cfg`` that torchvision creates by itself.

    ValueError when ``cfg`` pools RoIs otherwise than torchvision's ``MultiScaleRoIAlign`` (7x7
    boxes, 14x14 masks, sampling ratio 2, ``aligned=False``): no torchvision model equals it.
    """
    roi = (cfg.box_roi_size, cfg.mask_roi_size, cfg.roi_sampling_ratio, cfg.roi_aligned)
    if roi != (7, 14, 2, False):
        raise ValueError("torchvision pools RoIs with box_roi_size 7, mask_roi_size 14, roi_sampling_ratio 2, "
                         f"roi_aligned False; the config has {roi[0]}, {roi[1]}, {roi[2]}, {roi[3]}")
    return TorchvisionDefaults(
        rpn_head=cfg.rpn_conv_depth == 1,
        box_head=cfg.box_head == "mlp" and cfg.box_representation == TORCHVISION_BOX_REPRESENTATION,
        predictors=(cfg.box_out_features == TORCHVISION_BOX_REPRESENTATION
                    and cfg.mask_layers[-1] == TORCHVISION_MASK_LAYERS[-1]
                    and cfg.mask_dim_reduced == TORCHVISION_MASK_DIM_REDUCED),
        mask_head=tuple(cfg.mask_layers) == TORCHVISION_MASK_LAYERS and cfg.mask_dilation == 1 and not cfg.mask_head_norm,
    )


def torchvision_input(frame: torch.Tensor) -> torch.Tensor:
    """``uint8[H, W, 3]`` RGB → torchvision's ``float32[3, H, W]`` in [0, 1] (same device)."""
    return frame.permute(2, 0, 1).to(torch.float32) / 255


class TorchvisionDetections(Detections):
    """torchvision's output for one frame; it pastes masks itself (``full``: ``float32[K, H, W]``)."""

    full: npt.NDArray[np.float32]

    def __init__(self, out: Mapping[str, torch.Tensor], hw: tuple[int, int]) -> None:
        super().__init__(out["boxes"].cpu().numpy(), out["scores"].cpu().numpy(), out["labels"].cpu().numpy(),
                         np.zeros((len(out["boxes"]), 28, 28), np.float32), hw)
        self.full = out["masks"][:, 0].cpu().numpy()

    def paste(self, threshold: float = 0.5) -> npt.NDArray[np.bool_]:
        """torchvision's full-frame probabilities ``> threshold``: ``bool[K, H, W]``."""
        return self.full > threshold


def torchvision_detections(model: Any, frames: Sequence[npt.NDArray[np.uint8]],
                           batch_size: int = 1) -> list[Detections]:
    """torchvision's detections of ``uint8[H, W, 3]`` frames, ``batch_size`` frames per call.

    Frames go to the model's device. torchvision pads the frames of one call to a common size,
    which changes results when their sizes differ: our runner batches equal-size frames only.
    """
    device = next(model.parameters()).device
    dets: list[Detections] = []
    with torch.no_grad():
        for i in range(0, len(frames), batch_size):
            batch = frames[i:i + batch_size]
            outs = model([torchvision_input(torch.from_numpy(f).to(device)) for f in batch])
            dets += [TorchvisionDetections(o, (f.shape[0], f.shape[1])) for o, f in zip(outs, batch, strict=True)]
    return dets
