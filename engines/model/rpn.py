"""Region proposal network: FPN features → per-image proposals ``Tensor[P, 4]`` (padded-batch px).

Test-time selection exactly as torchvision's ``RegionProposalNetwork``:

1. per level, the ``pre_nms_top_n`` anchors with the highest objectness logit (``topk``);
2. decode with weights (1, 1, 1, 1), clip to the image (its resized size, not the padded one);
3. drop boxes with a side ``< min_size`` (1e-3) and scores ``sigmoid(logit) < score_thresh``;
4. NMS at ``nms_thresh`` (0.7) independently per level;
5. keep the ``post_nms_top_n`` best over all levels, by decreasing score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.model import box_ops
from engines.model.config import MaskRCNNConfig


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


def select_proposals(
    logits: list[torch.Tensor],
    deltas: list[torch.Tensor],
    anchors: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
    cfg: MaskRCNNConfig,
) -> list[torch.Tensor]:
    """Steps 1–5 above. Returns one ``Tensor[P_i, 4]`` per image, ``P_i <= post_nms_top_n``."""
    cand_logits, cand_boxes, cand_levels = [], [], []
    for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors, strict=True)):
        k = min(cfg.rpn_pre_nms_top_n, lg.shape[1])
        top, idx = lg.topk(k, dim=1)  # [N, k]
        n = lg.shape[0]
        sel = dl.gather(1, idx[..., None].expand(n, k, 4))  # [N, k, 4]
        boxes = box_ops.decode_boxes(sel.reshape(-1, 4), an[idx.reshape(-1)], (1.0, 1.0, 1.0, 1.0))
        cand_logits.append(top)
        cand_boxes.append(boxes.reshape(n, k, 4))
        cand_levels.append(torch.full((k,), lvl, dtype=torch.int64, device=lg.device))
    all_logits = torch.cat(cand_logits, 1)
    all_boxes = torch.cat(cand_boxes, 1)
    all_levels = torch.cat(cand_levels)
    scores = torch.sigmoid(all_logits)
    out = []
    for i, (h, w) in enumerate(image_sizes):
        boxes = box_ops.clip_boxes(all_boxes[i], h, w)
        keep = box_ops.small_box_mask(boxes, cfg.rpn_min_size) & (scores[i] >= cfg.rpn_score_thresh)
        b, s, lv = boxes[keep], scores[i][keep], all_levels[keep]
        kept = box_ops.batched_nms(b, s, lv, cfg.rpn_nms_thresh)[: cfg.rpn_post_nms_top_n]
        out.append(b[kept])
    return out
