"""Named model configurations: the demo model's architecture and the torchvision ones we compare with.

A preset is a :class:`MaskRCNNConfig`; :func:`engines.reference.torchvision_model` builds any of
them as torchvision's ``MaskRCNN`` (random weights, or a state dict loaded strictly), and our own
:class:`engines.model.MaskRCNN` runs the same config.

==========  ===============================================================================
name        architecture
==========  ===============================================================================
``demo``    the shipped demo model (docs/model-card.md): ResNet-18 + FPN with 128 channels,
            anchors 16..256 px, box head 256 wide, mask head 4 x 128, 5 classes (background
            and the scene generator's four shapes), resize 360/640
``v1``      ``maskrcnn_resnet50_fpn`` as torchvision builds it without weights (its backbone
            has trainable BatchNorm2d), 91 COCO classes
``v2``      ``maskrcnn_resnet50_fpn_v2`` likewise: BatchNorm in the FPN, the two-conv RPN head,
            the 4-conv + 1-fc box head and the mask head
``r18``     ``resnet_fpn_backbone("resnet18")`` (FrozenBatchNorm2d, FPN 256) with torchvision's
            default heads, 7 classes
``tiny``    ResNet-18 + FPN with 64 channels, box head 128 wide, mask head 2 x 64, 5 classes:
            fast on a CPU (the tests' small real model)
==========  ===============================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engines.model.config import MaskRCNNConfig

_RESNET18: dict[str, Any] = {"backbone": "resnet18", "block": "basic", "layers": (2, 2, 2, 2)}

_PRESETS: dict[str, dict[str, Any]] = {
    "demo": {**_RESNET18, "num_classes": 5, "fpn_channels": 128,
             "anchor_sizes": ((16,), (32,), (64,), (128,), (256,)), "box_representation": 256,
             "mask_layers": (128, 128, 128, 128), "mask_dim_reduced": 128, "min_size": 360, "max_size": 640},
    "v1": {"backbone_norm": "bn"},
    "v2": {"backbone_norm": "bn", "fpn_norm": True, "rpn_conv_depth": 2, "box_head": "convfc",
           "box_conv_layers": (256, 256, 256, 256), "box_fc_layers": (1024,), "box_head_norm": True,
           "mask_head_norm": True},
    "r18": {**_RESNET18, "num_classes": 7},
    "tiny": {**_RESNET18, "num_classes": 5, "fpn_channels": 64, "box_representation": 128,
             "mask_layers": (64, 64), "mask_dim_reduced": 64},
}
PRESET_NAMES = tuple(_PRESETS)


def preset(name: str, **changes: Any) -> MaskRCNNConfig:
    """A new config of preset ``name`` (see the module docstring) with ``changes`` applied.

    ``changes`` are :class:`MaskRCNNConfig` fields, e.g. ``preset("v1", min_size=480, max_size=800)``
    or ``preset("demo", backbone_norm="bn")`` (the trainable construction).
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets: {', '.join(PRESET_NAMES)}")
    return dataclasses.replace(MaskRCNNConfig(**_PRESETS[name]), **changes)
