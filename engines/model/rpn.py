"""Region proposal network: FPN features + anchors → proposals, ``post_nms_top_n`` slots per image.

Test-time selection exactly as torchvision's ``RegionProposalNetwork``:

1. per level, the ``pre_nms_top_n`` anchors with the highest objectness logit (``topk``);
2. decode with weights (1, 1, 1, 1), clip to the image (its resized size, not the padded one);
3. drop boxes with a side ``< min_size`` (1e-3) and scores ``sigmoid(logit) < score_thresh``
   (``>=`` keeps: the box head's score test is strict, as torchvision's);
4. NMS at ``nms_thresh`` (0.7) independently per level;
5. keep the ``post_nms_top_n`` best over all levels, by decreasing score.

Steps 1–3 are :func:`proposal_candidates`, 4–5 :func:`~engines.model.selection.select` with
the injected :class:`~engines.model.selection.SelectionOps`. Proposals are in padded-batch
pixels, which equal resized-image pixels (the padding is on the bottom/right).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.model import box_ops
from engines.model.config import MaskRCNNConfig
from engines.model.selection import Candidates, Selection, SelectionOps, gather_rows, select


class RPNHead(nn.Module):
    """``conv`` (``conv_depth`` × 3×3 conv + ReLU), then 1×1 ``cls_logits`` (A) and ``bbox_pred`` (4A)."""

    def __init__(self, channels: int, num_anchors: int, conv_depth: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1)) for _ in range(conv_depth)]
        )
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: logits ``Tensor[N, H*W*A]`` and deltas ``Tensor[N, H*W*A, 4]`` (location-major)."""
        logits, deltas = [], []
        for f in feats:
            t = f
            for block in self.conv:
                t = F.relu(block(t))
            lg = self.cls_logits(t)
            n, a, h, w = lg.shape
            logits.append(lg.permute(0, 2, 3, 1).reshape(n, h * w * a))
            deltas.append(self.bbox_pred(t).view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4))
        return logits, deltas


class RPN(nn.Module):
    """torchvision's ``RegionProposalNetwork`` at test time (parameters under ``rpn.head``)."""

    def __init__(self, cfg: MaskRCNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.head = RPNHead(cfg.fpn_channels, cfg.num_anchors, cfg.rpn_conv_depth)

    def forward(self, feats: list[torch.Tensor], anchors: list[torch.Tensor], image_size: tuple[int, int],
                ops: SelectionOps) -> Selection:
        """FPN ``feats`` (all levels) and one anchor ``Tensor[H_l*W_l*A, 4]`` per level → proposals.

        ``image_size``: the resized ``(h, w)`` boxes are clipped to. Returns
        ``min(post_nms_top_n, M)`` slots per image (``M``: candidates of step 1).
        """
        logits, deltas = self.head(feats)
        candidates = proposal_candidates(logits, deltas, anchors, image_size, self.cfg)
        slots = min(self.cfg.rpn_post_nms_top_n, int(candidates.scores.shape[1]))
        return select(candidates, ops, self.cfg.rpn_nms_thresh, slots, len(logits))


def proposal_candidates(
    logits: list[torch.Tensor],
    deltas: list[torch.Tensor],
    anchors: list[torch.Tensor],
    image_size: tuple[int, int],
    cfg: MaskRCNNConfig,
) -> Candidates:
    """Steps 1–3: ``M = sum_l min(pre_nms_top_n, H_l*W_l*A)`` candidates per image, grouped by level.

    ``logits[l]``: ``Tensor[N, H_l*W_l*A]``, ``deltas[l]``: ``Tensor[N, H_l*W_l*A, 4]``,
    ``anchors[l]``: ``Tensor[H_l*W_l*A, 4]`` (the same for every image).
    """
    sel_logits, sel_boxes, sel_levels = [], [], []
    for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors, strict=True)):
        n, m = lg.shape
        k = min(cfg.rpn_pre_nms_top_n, int(m))  # int(): a constant K when traced
        top, idx = lg.topk(k, dim=1)
        d = gather_rows(dl, idx)
        a = an[idx.reshape(-1)]
        sel_boxes.append(box_ops.decode_boxes(d.reshape(-1, 4), a, (1.0, 1.0, 1.0, 1.0)).reshape(n, k, 4))
        sel_logits.append(top)
        sel_levels.append(torch.full((n, k), lvl, dtype=torch.int64, device=lg.device))
    boxes = box_ops.clip_boxes(torch.cat(sel_boxes, 1), image_size[0], image_size[1])
    scores = torch.sigmoid(torch.cat(sel_logits, 1))
    valid = box_ops.sides_at_least(boxes, cfg.rpn_min_size) & (scores >= cfg.rpn_score_thresh)
    return Candidates(boxes, scores, torch.cat(sel_levels, 1), valid)
