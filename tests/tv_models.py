"""torchvision Mask R-CNN constructions used by the tests (torchvision is a test-only dependency)."""

from __future__ import annotations

import copy
import functools

import numpy as np
import numpy.typing as npt
import torch
from calibrate import calibrate, real_images
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.misc import FrozenBatchNorm2d

from engines.runner import Detections

SHAPE_CLASSES = ("__background__", "circle", "square", "triangle", "star")


def tv_input(frame: torch.Tensor) -> torch.Tensor:
    """``uint8[H, W, 3]`` → torchvision's ``float[3, H, W]`` in [0, 1]."""
    return frame.permute(2, 0, 1).to(torch.float32) / 255


def build(kind: str, min_size: int = 800, max_size: int = 1333, seed: int = 0, photos: int = 3) -> MaskRCNN:
    """A calibrated random-weight torchvision model: ``v1``, ``v2``, ``r18`` (resnet_fpn_backbone), ``tiny``.

    Calibrated on the first ``photos`` of :func:`calibrate.real_images` (fewer = faster at 800/1333).
    """
    torch.manual_seed(seed)
    kw = dict(min_size=min_size, max_size=max_size)
    if kind == "v1":
        m = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, **kw)
    elif kind == "v2":
        m = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91, **kw)
    elif kind == "r18":
        bb = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                 norm_layer=FrozenBatchNorm2d)
        m = MaskRCNN(bb, num_classes=7, **kw)
    elif kind == "tiny":
        body = resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
        bb = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                             [64, 128, 256, 512], out_channels=64)
        m = MaskRCNN(bb, num_classes=None, box_head=TwoMLPHead(64 * 49, 128), box_predictor=FastRCNNPredictor(128, 5),
                     mask_head=MaskRCNNHeads(64, (64, 64), 1), mask_predictor=MaskRCNNPredictor(64, 64, 5), **kw)
    else:
        raise ValueError(kind)
    imgs = [tv_input(i) for i in real_images()[:photos]]
    if min_size < 800:
        imgs = [nn.functional.interpolate(i[None], scale_factor=min_size / 512, mode="bilinear")[0] for i in imgs]
    return calibrate(m.eval(), imgs, seed=seed)


@functools.cache
def _built(kind: str, min_size: int, max_size: int, seed: int, photos: int) -> MaskRCNN:
    return build(kind, min_size, max_size, seed, photos)


def build_shared(kind: str, min_size: int = 800, max_size: int = 1333, seed: int = 0, photos: int = 3) -> MaskRCNN:
    """:func:`build`, calibrated once per test session (a deep copy each call: callers may edit it)."""
    return copy.deepcopy(_built(kind, min_size, max_size, seed, photos))


class PastedDetections(Detections):
    """torchvision pastes masks itself: its full-frame probabilities ``float[K, H, W]``, thresholded."""

    full: npt.NDArray[np.float32]

    def paste(self, threshold: float = 0.5) -> npt.NDArray[np.bool_]:
        return self.full > threshold


def tv_detections(tv: nn.Module, frames: list[npt.NDArray[np.uint8]]) -> list[Detections]:
    """torchvision's detections of ``uint8[H, W, 3]`` frames, one frame per call.

    torchvision pads a list of different-size images to one batch size, which changes results;
    our runner batches equal-size frames only.
    """
    dets: list[Detections] = []
    with torch.no_grad():
        for f in frames:
            o = tv([tv_input(torch.from_numpy(f))])[0]
            d = PastedDetections(o["boxes"].numpy(), o["scores"].numpy(), o["labels"].numpy(),
                                 np.zeros((len(o["boxes"]), 28, 28), np.float32), f.shape[:2])
            d.full = o["masks"][:, 0].numpy()
            dets.append(d)
    return dets
