"""The complete description of a Mask R-CNN: architecture, pre/post-processing and thresholds.

Defaults are torchvision's ``maskrcnn_resnet50_fpn`` at test time. Everything that cannot be
read off a state dict's tensors (anchor sizes, input sizes, thresholds) lives here and is
stored in our model file's metadata.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

RESNET_BLOCKS: dict[str, tuple[Literal["basic", "bottleneck"], tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}


@dataclass
class MaskRCNNConfig:
    """Architecture and test-time settings. JSON round-trips through :meth:`to_dict`/:meth:`from_dict`."""

    num_classes: int = 91
    # Backbone: ResNet body, all four stages returned to the FPN, plus LastLevelMaxPool ("pool").
    backbone: str = "resnet50"
    block: Literal["basic", "bottleneck"] = "bottleneck"
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    backbone_norm: Literal["frozen_bn", "bn"] = "frozen_bn"
    fpn_channels: int = 256
    fpn_norm: bool = False
    # RPN
    anchor_sizes: tuple[tuple[int, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: tuple[tuple[float, ...], ...] = ((0.5, 1.0, 2.0),) * 5
    rpn_conv_depth: int = 1
    rpn_pre_nms_top_n: int = 1000
    rpn_post_nms_top_n: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_score_thresh: float = 0.0
    rpn_min_size: float = 1e-3
    # Box head: "mlp" = TwoMLPHead(fc6, fc7) (v1); "convfc" = FastRCNNConvFCHead (v2).
    box_head: Literal["mlp", "convfc"] = "mlp"
    box_representation: int = 1024
    box_conv_layers: tuple[int, ...] = ()
    box_fc_layers: tuple[int, ...] = ()
    box_head_norm: bool = False
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    # Mask head
    mask_layers: tuple[int, ...] = (256, 256, 256, 256)
    mask_dilation: int = 1
    mask_head_norm: bool = False
    mask_dim_reduced: int = 256
    # RoIAlign (torchvision Mask R-CNN: aligned=False, sampling_ratio=2; see engines.roi_align)
    box_roi_size: int = 7
    mask_roi_size: int = 14
    roi_sampling_ratio: int = 2
    roi_aligned: bool = False
    # Preprocessing (GeneralizedRCNNTransform)
    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    size_divisible: int = 32
    # Static-shape mode (export): number of box-head candidates kept before class-wise NMS.
    static_box_candidates: int = 3840
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {self.num_classes}")
        if len(self.anchor_sizes) != 5 or len(self.aspect_ratios) != 5:
            raise ValueError(
                "anchor_sizes and aspect_ratios need one entry per FPN output (P2..P5 and pool = 5), got "
                f"{len(self.anchor_sizes)} and {len(self.aspect_ratios)}"
            )
        if self.box_head not in ("mlp", "convfc"):
            raise ValueError(f"box_head must be 'mlp' or 'convfc', got {self.box_head!r}")

    @property
    def num_anchors(self) -> int:
        """Anchors per location (same on every level)."""
        return len(self.anchor_sizes[0]) * len(self.aspect_ratios[0])

    @property
    def box_out_features(self) -> int:
        """Width of the box head's output feature."""
        if self.box_head == "mlp":
            return self.box_representation
        return self.box_fc_layers[-1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaskRCNNConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; allowed: {sorted(names)}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, list):
                v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
            kw[k] = v
        return cls(**kw)
