"""Fixed-shape proposal and detection selection for :meth:`MaskRCNN.forward_static`.

Same pure functions as the dynamic path (``box_ops``), but boxes are never removed: they are
marked invalid, and the selection NMS (``StaticOps.nms``) only considers valid ones. Outputs
are padded to fixed sizes with a per-image count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engines.model import box_ops
from engines.model.box_head import BOX_MIN_SIZE
from engines.model.config import MaskRCNNConfig

if TYPE_CHECKING:
    from engines.model.maskrcnn import StaticOps


@dataclass
class StaticDetections:
    counts: torch.Tensor  # [N]
    boxes: torch.Tensor  # [N, D, 4] resized-image pixels, zeros past counts
    scores: torch.Tensor  # [N, D]
    labels: torch.Tensor  # [N, D]
    candidates: torch.Tensor  # [N]


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[N, M, ...]`` rows picked by ``idx[N, K]`` → ``[N, K, ...]``."""
    shape = idx.shape + t.shape[2:]
    expand_idx = idx.reshape(*idx.shape, *([1] * (t.dim() - 2))).expand(shape)
    return t.gather(1, expand_idx)


def static_proposals(
    logits: list[torch.Tensor],
    deltas: list[torch.Tensor],
    anchors: list[torch.Tensor],
    size: tuple[int, int],
    cfg: MaskRCNNConfig,
    ops: StaticOps,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposals ``[N, post_nms_top_n, 4]`` and their validity ``[N, post_nms_top_n]`` bool."""
    sel_logits, sel_boxes, sel_levels = [], [], []
    for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors, strict=True)):
        n, m = lg.shape
        k = min(cfg.rpn_pre_nms_top_n, int(m))  # int(): a constant K when traced
        top, idx = lg.topk(k, dim=1)
        d = _gather(dl, idx)
        a = an[idx.reshape(-1)]
        sel_boxes.append(box_ops.decode_boxes(d.reshape(-1, 4), a, (1.0, 1.0, 1.0, 1.0)).reshape(n, k, 4))
        sel_logits.append(top)
        sel_levels.append(torch.full((n, k), lvl, dtype=torch.int64, device=lg.device))
    boxes = box_ops.clip_boxes(torch.cat(sel_boxes, 1), size[0], size[1])
    scores = torch.sigmoid(torch.cat(sel_logits, 1))
    levels = torch.cat(sel_levels, 1)
    n, m = scores.shape
    valid = box_ops.small_box_mask(boxes.reshape(-1, 4), cfg.rpn_min_size).view(n, m)
    valid = valid & (scores >= cfg.rpn_score_thresh)
    p = min(cfg.rpn_post_nms_top_n, int(m))
    keep, counts = ops.nms(boxes, scores, levels, valid, cfg.rpn_nms_thresh, p, len(logits))
    props = _gather(boxes, keep)
    prop_valid = torch.arange(p, device=boxes.device)[None, :] < counts[:, None]
    return props * prop_valid[..., None], prop_valid


def static_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    prop_valid: torch.Tensor,
    size: tuple[int, int],
    cfg: MaskRCNNConfig,
    ops: StaticOps,
) -> StaticDetections:
    """``boxes[N, P, K, 4]``, softmax ``scores[N, P, K]`` → padded detections (``D = detections_per_img``)."""
    n, p, k = scores.shape
    boxes = box_ops.clip_boxes(boxes, size[0], size[1])[:, :, 1:].reshape(n, -1, 4)
    labels = torch.arange(1, k, device=scores.device).view(1, 1, -1).expand(n, p, k - 1).reshape(n, -1)
    flat_scores = scores[:, :, 1:].reshape(n, -1)
    valid = prop_valid[:, :, None].expand(n, p, k - 1).reshape(n, -1) & (flat_scores > cfg.box_score_thresh)
    valid = valid & box_ops.small_box_mask(boxes.reshape(-1, 4), BOX_MIN_SIZE).view(n, -1)
    candidates = valid.sum(1)
    c = min(cfg.static_box_candidates, int(flat_scores.shape[1]))
    masked = torch.where(valid, flat_scores, torch.full_like(flat_scores, -1.0))
    cand_scores, cand_idx = masked.topk(c, dim=1)
    cand_boxes = _gather(boxes, cand_idx)
    cand_labels = labels.gather(1, cand_idx)
    cand_valid = valid.gather(1, cand_idx)
    d = cfg.detections_per_img
    keep, counts = ops.nms(cand_boxes, cand_scores, cand_labels, cand_valid, cfg.box_nms_thresh, d, k)
    ok = torch.arange(keep.shape[1], device=keep.device)[None, :] < counts[:, None]
    out_boxes = _gather(cand_boxes, keep) * ok[..., None]
    out_scores = cand_scores.gather(1, keep) * ok
    out_labels = cand_labels.gather(1, keep) * ok
    if keep.shape[1] < d:  # fewer candidates than detection slots: pad to D
        pad = d - keep.shape[1]
        out_boxes = torch.nn.functional.pad(out_boxes, (0, 0, 0, pad))
        out_scores = torch.nn.functional.pad(out_scores, (0, pad))
        out_labels = torch.nn.functional.pad(out_labels, (0, pad))
    return StaticDetections(counts, out_boxes, out_scores, out_labels, candidates)
