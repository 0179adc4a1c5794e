"""Preprocessing (torchvision's ``GeneralizedRCNNTransform`` at test time) and box rescaling.

Frames ``uint8[N, H, W, 3]`` RGB → ``x / 255`` → ``(x - mean) / std`` → bilinear resize
(``align_corners=False``, no antialias) by ``scale = min(min_size / short, max_size / long)``
computed in double precision, output size ``floor(side * scale)`` → zero padding on the bottom/right to a
multiple of ``size_divisible``. Normalizing before resizing (as torchvision does) matters only
at float-rounding level, but we keep its order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resize_scale(height: int, width: int, min_size: float, max_size: float) -> float:
    """torchvision's eager scale factor, in Python (double) arithmetic.

    (Its traced/scripted path computes in float32, which can differ by one output pixel:
    400×600 at min_size 320 is 320×480 eagerly but 319×479 in float32. We follow eager.)
    """
    return min(min_size / min(height, width), max_size / max(height, width))


def resized_size(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """Network input size ``(h, w)`` (before padding) for a ``height × width`` frame."""
    s = resize_scale(height, width, min_size, max_size)
    return math.floor(height * s), math.floor(width * s)


def padded_size(height: int, width: int, size_divisible: int) -> tuple[int, int]:
    """``(h, w)`` rounded up to multiples of ``size_divisible``."""
    return (int(math.ceil(height / size_divisible) * size_divisible),
            int(math.ceil(width / size_divisible) * size_divisible))


def to_float_nchw(frames: torch.Tensor) -> torch.Tensor:
    """``uint8[N, H, W, 3]`` → ``float32[N, 3, H, W]`` in [0, 1].

    Cast first, then permute: the exported graph then reads ``frames -> Cast -> Transpose``,
    because TensorRT's ONNX parser accepts UINT8 only as a graph input feeding ``Cast``
    (``build_engine.onnx_check.check_uint8``). Values and strides equal the permute-first
    order (the cast is elementwise and keeps the permuted strides either way).
    """
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8[N, H, W, 3] RGB, got {frames.dtype}{list(frames.shape)}")
    return frames.to(torch.float32).permute(0, 3, 1, 2) / 255


def normalize_resize(
    images: torch.Tensor,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    out_size: tuple[int, int],
) -> torch.Tensor:
    """``float[N, 3, H, W]`` in [0, 1] → normalized and resized ``float[N, 3, h, w]``."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    x = (images - m) / s
    if tuple(x.shape[-2:]) == tuple(out_size):
        # torchvision still interpolates at scale 1.0, which is the identity for bilinear.
        return x
    return F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)


def pad_to(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad ``[N, C, h, w]`` on the bottom/right to ``size``."""
    h, w = images.shape[-2:]
    return F.pad(images, (0, size[1] - w, 0, size[0] - h))


def boxes_to_source(boxes: torch.Tensor, resized: tuple[int, int], original: tuple[int, int]) -> torch.Tensor:
    """Scale ``Tensor[K, 4]`` boxes from network-input to source pixels (float32 ratios as torchvision)."""
    rh = torch.tensor(original[0], dtype=torch.float32) / torch.tensor(resized[0], dtype=torch.float32)
    rw = torch.tensor(original[1], dtype=torch.float32) / torch.tensor(resized[1], dtype=torch.float32)
    rh, rw = rh.to(boxes.device), rw.to(boxes.device)
    return torch.stack((boxes[:, 0] * rw, boxes[:, 1] * rh, boxes[:, 2] * rw, boxes[:, 3] * rh), dim=1)
