"""Reading torchvision Mask R-CNN state dicts: architecture detection, key migration, strict loading.

Accepted inputs: a plain ``state_dict``, a training checkpoint with it under ``"model"``
(torchvision's reference scripts), keys with a DataParallel ``module.`` prefix, and the
pre-0.13 names (``fpn.inner_blocks.0.weight``, ``rpn.head.conv.weight``,
``mask_head.mask_fcn1.weight``) that torchvision itself migrates on load.

The architecture is read from tensor names and shapes: ResNet depth and block type, norm
kind (``num_batches_tracked`` present = ``BatchNorm2d``, as in v2), FPN width and norm, RPN
conv depth, box head type and widths, mask head widths, class count. What tensors cannot
tell (anchor sizes, input sizes, thresholds) comes from torchvision's defaults unless
overridden.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from engines.model.config import RESNET_BLOCKS, MaskRCNNConfig
from engines.model.maskrcnn import MaskRCNN


class StateDictError(ValueError):
    """A state dict that does not describe a Mask R-CNN we can load; the message says what is wrong."""


_OLD_KEYS = [
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
]
_MASK_FCN = re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$")


def unwrap_checkpoint(obj: Any) -> dict[str, torch.Tensor]:
    """The ``str → Tensor`` state dict inside ``obj`` (plain, ``{"model": ...}``, ``module.`` prefixed)."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise StateDictError(
            "expected a state dict (name → tensor), or a training checkpoint holding one under 'model'; "
            f"got {type(obj).__name__}" + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, Mapping) else "")
        )
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def migrate_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename pre-0.13 torchvision keys to the current layout (which our modules use)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        for pat, rep in _OLD_KEYS:
            k = pat.sub(rep, k)
        m = _MASK_FCN.match(k)
        if m:
            k = f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"
        out[k] = v
    return out


def _indices(sd: Mapping[str, torch.Tensor], prefix: str, suffix: str) -> list[int]:
    pat = re.compile("^" + re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
    return sorted(int(m.group(1)) for k in sd if (m := pat.match(k)))


def _need(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise StateDictError(f"not a torchvision Mask R-CNN state dict: missing {key!r}")
    return sd[key]


def detect_config(sd: Mapping[str, torch.Tensor], **overrides: Any) -> MaskRCNNConfig:
    """Architecture of a (migrated) state dict; ``overrides`` replace any detected or default field."""
    layers = tuple(len(_indices(sd, f"backbone.body.layer{i}.", ".conv1.weight")) for i in range(1, 5))
    if 0 in layers:
        raise StateDictError(f"not a ResNet-FPN Mask R-CNN: backbone.body.layer1..4 have {layers} blocks")
    block = "bottleneck" if "backbone.body.layer1.0.conv3.weight" in sd else "basic"
    name = next((n for n, (b, ls) in RESNET_BLOCKS.items() if b == block and ls == layers), f"resnet-{block}")
    fpn_inner = _indices(sd, "backbone.fpn.inner_blocks.", ".0.weight")
    if len(fpn_inner) != 4:
        raise StateDictError(f"the FPN must take all four ResNet stages (returned_layers=[1,2,3,4]); found {len(fpn_inner)}")
    rpn_depth = len(_indices(sd, "rpn.head.conv.", ".0.weight"))
    kw: dict[str, Any] = dict(
        num_classes=int(_need(sd, "roi_heads.box_predictor.cls_score.weight").shape[0]),
        backbone=name, block=block, layers=layers,
        backbone_norm="bn" if "backbone.body.bn1.num_batches_tracked" in sd else "frozen_bn",
        fpn_channels=int(sd["backbone.fpn.inner_blocks.0.0.weight"].shape[0]),
        fpn_norm="backbone.fpn.inner_blocks.0.1.weight" in sd,
        rpn_conv_depth=rpn_depth,
        mask_layers=tuple(int(sd[f"roi_heads.mask_head.{i}.0.weight"].shape[0])
                          for i in _indices(sd, "roi_heads.mask_head.", ".0.weight")),
        mask_head_norm="roi_heads.mask_head.0.1.weight" in sd,
        mask_dim_reduced=int(_need(sd, "roi_heads.mask_predictor.conv5_mask.weight").shape[1]),
    )
    if "roi_heads.box_head.fc6.weight" in sd:
        kw.update(box_head="mlp", box_representation=int(sd["roi_heads.box_head.fc6.weight"].shape[0]))
    else:
        convs = _indices(sd, "roi_heads.box_head.", ".0.weight")
        fcs = [i for i in _indices(sd, "roi_heads.box_head.", ".weight") if sd[f"roi_heads.box_head.{i}.weight"].dim() == 2]
        if not fcs:
            raise StateDictError("box head not recognised: neither box_head.fc6 (v1) nor conv+FC layers (v2)")
        kw.update(box_head="convfc",
                  box_conv_layers=tuple(int(sd[f"roi_heads.box_head.{i}.0.weight"].shape[0]) for i in convs),
                  box_fc_layers=tuple(int(sd[f"roi_heads.box_head.{i}.weight"].shape[0]) for i in fcs),
                  box_head_norm=bool(convs) and f"roi_heads.box_head.{convs[0]}.1.weight" in sd)
    num_anchors = int(_need(sd, "rpn.head.cls_logits.weight").shape[0])
    kw.update(overrides)
    cfg = MaskRCNNConfig(**kw)
    if cfg.num_anchors != num_anchors:
        raise StateDictError(
            f"the RPN predicts {num_anchors} anchors per location but the anchor config gives {cfg.num_anchors} "
            f"(sizes {cfg.anchor_sizes[0]} × ratios {cfg.aspect_ratios[0]}); pass anchor_sizes/aspect_ratios"
        )
    return cfg


def load_into(model: MaskRCNN, sd: Mapping[str, torch.Tensor]) -> None:
    """Strict load: every key used, none missing, every shape equal — else one :class:`StateDictError`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {what} keys ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})")
        if wrong:
            parts.append("shape mismatches (" + ", ".join(
                f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:4]) + ")")
        raise StateDictError(
            f"state dict does not match the {model.cfg.backbone} Mask R-CNN it describes: " + "; ".join(parts)
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def model_from_state_dict(obj: Any, **overrides: Any) -> MaskRCNN:
    """Build and strictly load a :class:`MaskRCNN` from a torchvision state dict or checkpoint."""
    sd = migrate_keys(unwrap_checkpoint(obj))
    model = MaskRCNN(detect_config(sd, **overrides))
    load_into(model, sd)
    return model
