"""Random-weight torchvision Mask R-CNNs calibrated on real photos, so that parity and timing see real detections.

No trained weights but the demo model's ship with the project, and none can be downloaded; a
calibrated random model does the same work as a trained one (100 detections with real masks).

Random weights give saturated or empty outputs: activations explode through the ResNet,
objectness is flat, class scores sit at 1/K below the 0.05 threshold, masks are all-on or
all-off. :func:`calibrate` fixes that on real images, in place:

1. data-dependent batch-norm init: every (frozen) batch norm gets the running mean/variance of
   the activations it sees, weight ~ U(0.5, 1.5) and a small random bias;
2. the RPN objectness, box classifier, box regressor and mask logits are rescaled so their
   outputs have the target spread (logit std ~ 2-3; deltas std ~ 0.1).

:func:`calibrated_model` builds a preset (:mod:`engines.presets`) through
:func:`engines.reference.torchvision_model` and calibrates it. Used by the tests and
``tools/bench_checkpoint.py``; needs torchvision and scikit-image (the ``test`` extra).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from engines.presets import preset
from engines.reference import torchvision_input, torchvision_model


def _norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ in ("FrozenBatchNorm2d", "BatchNorm2d")]


@torch.no_grad()
def calibrate(model: Any, images: Sequence[torch.Tensor], seed: int = 0) -> Any:
    """Calibrate a torchvision ``MaskRCNN`` in eval mode on ``float[3, H, W]`` images in [0, 1]; returns it."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    hooks = []

    def set_stats(mod: Any, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        if getattr(mod, "_calibrated", False) or x.numel() == 0:
            return
        c = x.shape[1]
        mod.running_mean.copy_(x.transpose(0, 1).reshape(c, -1).mean(1))
        mod.running_var.copy_(x.transpose(0, 1).reshape(c, -1).var(1) + 1e-3)
        mod.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        mod.bias.copy_(torch.randn(c, generator=gen) * 0.2)
        mod._calibrated = True

    for m in _norms(model):
        hooks.append(m.register_forward_pre_hook(set_stats))
    model(list(images))
    for h in hooks:
        h.remove()

    # Output layers: scale weights so that outputs have the target std on these images.
    targets = [
        (model.rpn.head.cls_logits, 2.5),
        (model.rpn.head.bbox_pred, 0.1),
        # fewer classes share less probability mass: a smaller logit spread keeps scores in (0, 1)
        (model.roi_heads.box_predictor.cls_score, 3.0 if model.roi_heads.box_predictor.cls_score.out_features > 20
         else 1.2),
        (model.roi_heads.box_predictor.bbox_pred, 0.5),
        # crisp masks: few pixels near the 0.5 threshold, as in trained models
        (model.roi_heads.mask_predictor.mask_fcn_logits, 6.0),
    ]
    # Two passes: the RPN and box outputs first (masks only exist once boxes pass the threshold).
    for group in (targets[:4], targets[4:]):
        outs: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(group))}
        handles = [layer.register_forward_hook(lambda _m, _i, o, acc=outs[i]: acc.append(o.detach().flatten()))
                   for i, (layer, _) in enumerate(group)]
        model(list(images))
        for h in handles:
            h.remove()
        for i, (layer, target) in enumerate(group):
            if not outs[i]:
                continue
            y = torch.cat(outs[i])
            std = float(y.std()) if y.numel() > 1 else 1.0
            layer.weight.mul_(target / max(std, 1e-6))
            layer.bias.normal_(0, target / 3, generator=gen)
    return model


def real_images() -> list[torch.Tensor]:
    """A few real photographs from scikit-image as ``uint8[H, W, 3]`` tensors."""
    import skimage.data

    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        img = getattr(skimage.data, name)()
        out.append(torch.from_numpy(img[..., :3].copy()))
    return out


def calibrated_model(kind: str, min_size: int = 800, max_size: int = 1333, seed: int = 0, photos: int = 3) -> Any:
    """torchvision's model of preset ``kind`` (``v1``, ``v2``, ``r18``, ``tiny``...) with calibrated random weights.

    Weights are drawn from ``seed``; calibrated on the first ``photos`` of :func:`real_images`
    (fewer = faster at 800/1333), scaled by ``min_size / 512`` when ``min_size < 800``.
    """
    torch.manual_seed(seed)
    model = torchvision_model(preset(kind, min_size=min_size, max_size=max_size))
    images = [torchvision_input(i) for i in real_images()[:photos]]
    if min_size < 800:
        images = [nn.functional.interpolate(i[None], scale_factor=min_size / 512, mode="bilinear")[0] for i in images]
    return calibrate(model, images, seed=seed)


@functools.cache
def _calibrated_once(kind: str, min_size: int, max_size: int, seed: int, photos: int) -> Any:
    return calibrated_model(kind, min_size, max_size, seed, photos)


def shared_calibrated_model(kind: str, min_size: int = 800, max_size: int = 1333, seed: int = 0,
                            photos: int = 3) -> Any:
    """:func:`calibrated_model`, calibrated once per process (a deep copy each call: callers may edit it)."""
    return copy.deepcopy(_calibrated_once(kind, min_size, max_size, seed, photos))
