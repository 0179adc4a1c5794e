"""Pure box math: decoding, clipping, filtering and non-maximum suppression.

Boxes are ``Tensor[N, 4]`` ``(x1, y1, x2, y2)`` in pixels, ``x2 >= x1`` not enforced.
Every function reproduces torchvision's numerics (``BoxCoder``, ``clip_boxes_to_image``,
``remove_small_boxes``, ``nms``, ``batched_nms``) so that detections match bit for bit
up to float rounding in the network.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BBOX_XFORM_CLIP = math.log(1000.0 / 16)
"""Largest ``dw``/``dh`` before ``exp`` (torchvision's BoxCoder clamp): boxes grow at most 62.5×."""


def decode_boxes(
    deltas: torch.Tensor, anchors: torch.Tensor, weights: tuple[float, float, float, float]
) -> torch.Tensor:
    """Apply ``Tensor[N, 4k]`` regression deltas to ``Tensor[N, 4]`` reference boxes → ``Tensor[N, k, 4]``.

    ``dx, dy`` shift the centre by a fraction of the width/height, ``dw, dh`` scale it by
    ``exp(min(d, log(1000/16)))``; ``weights`` divide the deltas first ((1,1,1,1) for the
    RPN, (10,10,5,5) for the box head).
    """
    anchors = anchors.to(deltas.dtype)
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=BBOX_XFORM_CLIP)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=BBOX_XFORM_CLIP)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    half_w = 0.5 * (torch.exp(dw) * widths[:, None])
    half_h = 0.5 * (torch.exp(dh) * heights[:, None])
    return torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2)


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clamp ``Tensor[..., 4]`` boxes to ``[0, width] × [0, height]``."""
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def sides_at_least(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """``Tensor[...]`` bool, True where a ``Tensor[..., 4]`` box is at least ``min_size`` wide and high.

    These are the boxes torchvision's ``remove_small_boxes`` keeps (it returns their indices).
    """
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return (ws >= min_size) & (hs >= min_size)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """``Tensor[N, N]`` IoU with torchvision's NMS arithmetic (``inter / (a_i + a_j - inter)``)."""
    area = box_area(boxes)
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, None] + area[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices ``Tensor[K]`` int64 of kept boxes, by decreasing score.

    Boxes are visited in stable descending score order; a box is dropped when its IoU with
    an already kept box is ``> iou_threshold``. The IoU matrix is computed at once; the greedy
    pass visits only kept rows.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, stable=True, descending=True)[1]
    over = (pairwise_iou(boxes[order]) > iou_threshold).cpu().numpy()
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS independently per group (class or level); kept indices by decreasing score.

    Same strategy switch as torchvision on CPU: up to 1000 boxes use the coordinate-offset
    trick (one NMS over boxes shifted apart per group), more boxes run one NMS per group.
    The two differ only in float rounding of the IoU.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if boxes.numel() > 4000:
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for g in torch.unique(groups):
            idx = torch.where(groups == g)[0]
            keep_mask[idx[nms(boxes[idx], scores[idx], iou_threshold)]] = True
        kept = torch.where(keep_mask)[0]
        return kept[scores[kept].sort(descending=True)[1]]
    offsets = groups.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)
