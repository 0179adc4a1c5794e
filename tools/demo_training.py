"""What the demo model's training, fine-tuning and evaluation tools share.

The architecture is the ``demo`` preset (:mod:`engines.presets`), built through
:func:`engines.reference.torchvision_model`; this adds the training-only settings, BatchNorm
folding and torchvision's training targets. Needs torchvision.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engines.model.config import MaskRCNNConfig
from engines.presets import preset
from engines.reference import torchvision_model

TRAIN_KWARGS: dict[str, Any] = {
    "rpn_fg_iou_thresh": 0.7,
    "rpn_bg_iou_thresh": 0.3,
    "box_fg_iou_thresh": 0.5,
    "box_bg_iou_thresh": 0.5,
    "rpn_pre_nms_top_n_train": 1000,
    "rpn_post_nms_top_n_train": 500,
    "rpn_batch_size_per_image": 256,
    "rpn_positive_fraction": 0.5,
    "box_batch_size_per_image": 64,
    "box_positive_fraction": 0.25,
}
"""torchvision ``MaskRCNN`` keyword arguments that only act in training: the matchers' IoU
thresholds (torchvision's defaults) and the sampling sizes."""


def demo_config(frozen_bn: bool = True) -> MaskRCNNConfig:
    """The demo architecture; ``frozen_bn`` picks FrozenBatchNorm2d (shipping) or BatchNorm2d (training)."""
    return preset("demo", backbone_norm="frozen_bn" if frozen_bn else "bn")


def build_model(frozen_bn: bool) -> Any:
    """torchvision's demo model with random weights (eval mode; call ``.train()`` to train it)."""
    return torchvision_model(demo_config(frozen_bn), **TRAIN_KWARGS)


def recorded_kwargs(cfg: MaskRCNNConfig) -> dict[str, Any]:
    """The ``MaskRCNN`` keyword arguments of ``cfg`` as ``demo_config.json`` records them."""
    return {
        "num_classes": None,  # torchvision requires None when box/mask predictors are given
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "image_mean": list(cfg.image_mean),
        "image_std": list(cfg.image_std),
        "rpn_pre_nms_top_n_test": cfg.rpn_pre_nms_top_n,
        "rpn_post_nms_top_n_test": cfg.rpn_post_nms_top_n,
        "rpn_nms_thresh": cfg.rpn_nms_thresh,
        "rpn_score_thresh": cfg.rpn_score_thresh,
        "box_score_thresh": cfg.box_score_thresh,
        "box_nms_thresh": cfg.box_nms_thresh,
        "box_detections_per_img": cfg.detections_per_img,
        **TRAIN_KWARGS,
    }


def frozen_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
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


def mask_boxes(masks: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """Tight ``xyxy`` float32 boxes ``[K, 4]`` of bool masks ``[K, H, W]`` (pixel edges, exclusive max)."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        cols = np.flatnonzero(m.any(axis=0))
        rows = np.flatnonzero(m.any(axis=1))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def training_pair(image: npt.NDArray[np.uint8], masks: npt.NDArray[np.bool_], labels: npt.NDArray[np.int64],
                  device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One scene as torchvision's training input: image ``float[3, H, W]`` in 0..1 and its target."""
    return (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255).to(device),
            {"boxes": torch.from_numpy(mask_boxes(masks)).to(device),
             "labels": torch.from_numpy(labels).to(device),
             "masks": torch.from_numpy(masks).to(torch.uint8).to(device)})
