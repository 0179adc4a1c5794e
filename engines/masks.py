"""Mask pasting: 28×28 box-relative mask probabilities → full-frame binary masks.

Pure functions, identical to torchvision's ``paste_masks_in_image`` (padding 1):

1. pad each ``M×M`` mask with one zero pixel on every side (``M+2``) and grow its box
   about the centre by ``(M+2)/M`` so the padded mask covers it;
2. truncate the grown box to integers (``int64`` cast, towards zero);
3. resize the mask bilinearly (``align_corners=False``) to ``(y2-y1+1) × (x2-x1+1)``;
4. copy the part that falls inside the frame; threshold ``> threshold``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F


def expand_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Scale ``Tensor[K, 4]`` xyxy boxes about their centres by ``scale``."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], dim=1)


def paste_masks_torch(
    mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int, padding: int = 1
) -> torch.Tensor:
    """Paste ``Tensor[K, M, M]`` probabilities into ``Tensor[K, height, width]`` (float, unthresholded).

    ``boxes`` is ``Tensor[K, 4]`` xyxy in frame pixels. Exactly torchvision's paste.
    """
    k, m = mask_probs.shape[0], mask_probs.shape[-1]
    out = torch.zeros((k, height, width), dtype=mask_probs.dtype, device=mask_probs.device)
    if k == 0:
        return out
    scale = float(m + 2 * padding) / m
    padded = F.pad(mask_probs, (padding,) * 4)
    ib = expand_boxes(boxes.to(torch.float32), scale).to(torch.int64).tolist()
    for i, (x1, y1, x2, y2) in enumerate(ib):
        w = max(x2 - x1 + 1, 1)
        h = max(y2 - y1 + 1, 1)
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        x0, xe = max(x1, 0), min(x2 + 1, width)
        y0, ye = max(y1, 0), min(y2 + 1, height)
        if x0 >= xe or y0 >= ye:
            continue
        out[i, y0:ye, x0:xe] = resized[y0 - y1 : ye - y1, x0 - x1 : xe - x1]
    return out


def paste_masks(
    mask_probs: npt.NDArray[np.float32],
    boxes: npt.NDArray[np.float32],
    height: int,
    width: int,
    threshold: float = 0.5,
) -> npt.NDArray[np.bool_]:
    """Numpy front of :func:`paste_masks_torch`, thresholded: ``bool[K, height, width]``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"paste_masks needs a positive frame size, got height={height}, width={width}")
    probs = paste_masks_torch(torch.from_numpy(np.ascontiguousarray(mask_probs)),
                              torch.from_numpy(np.ascontiguousarray(boxes)), height, width)
    return (probs > threshold).numpy()
