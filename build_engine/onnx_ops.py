"""Graph versions of the static model's NMS and RoIAlign, for :meth:`MaskRCNN.forward_static`.

:class:`GraphOps` is a :class:`~engines.model.selection.StaticOps` whose two operations are
``torch.autograd.Function`` s with an ONNX ``symbolic``: the TorchScript exporter calls
their eager ``forward`` while tracing (so the traced values equal the eager static mode)
and writes the nodes below in their place.

NMS (``StaticOps.nms``: boxes ``[N, M, 4]``, scores ``[N, M]``, groups ``[N, M]`` in
``[0, G)``, valid ``[N, M]`` → kept indices ``[N, K]`` by decreasing score, counts ``[N]``)::

    class_scores[N, G, M] = Where(groups == g and valid, scores, -1)   # groups as NMS classes
    selected[S, 3]        = NonMaxSuppression(boxes, class_scores, max_out, iou, score_threshold=-0.5)
    kept[N, M]            = ScatterND(zeros, selected[:, (batch, box)], ones)
    _, keep[N, K]         = TopK(Where(kept, scores, -1), K = min(max_out, M))
    counts[N]             = Min(ReduceSum(kept), K)

Levels (RPN) and classes (box head) are the ``G`` classes of one ``NonMaxSuppression``, so
no box is shifted by a coordinate offset: the IoU is computed on the boxes themselves.
Invalid boxes score -1 in every class and are dropped by the score threshold (-0.5; valid
scores are probabilities >= 0). ``K <= 3840`` (TensorRT's TopK limit) and ``M <= 5000``
(its NMS box limit) are checked by :mod:`build_engine.onnx_check`.

RoIAlign (``rois [R, 5]`` float32 ``(batch_index, x1, y1, x2, y2)``, four feature maps):

* ``"plugin"``: one ``maskrcnn_streamer::MultilevelRoIAlign`` node (the TensorRT plugin,
  attributes from :func:`build_engine.plugin_spec.onnx_attributes`).
* ``"onnx"``: standard operators only, static shapes (:func:`portable_roi_align`): the level
  of each RoI is computed in the graph, every bilinear tap is a ``Gather`` from one
  channels-last float32 table of all levels. Per-level ``RoiAlign`` nodes would either pool
  every RoI on every level (4× the work, then ``Where``) or need ``NonZero`` (data-dependent
  shapes); see ``docs/onnx-export.md`` for timings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from build_engine.plugin_spec import (
    NUM_LEVELS,
    PLUGIN_NAME,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    onnx_attributes,
)
from engines.model.selection import StaticOps
from engines.roi_align import (
    RoIAlignParams,
    axis_samples,
    bilinear_axis,
    map_levels,
    multilevel_roi_align,
    roi_geometry,
)

RoIAlignKind = Literal["plugin", "onnx"]
NMS_SCORE_THRESHOLD = -0.5
"""Scores of invalid boxes are -1, valid ones are probabilities: any value in (-1, 0) separates them."""
_INVALID_SCORE = -1.0
_ONNX_INT64, _ONNX_BOOL = 7, 9
"""``onnx.TensorProto`` element types for ``Cast`` (without importing onnx here)."""


def _const(g: Any, value: torch.Tensor) -> Any:
    return g.op("Constant", value_t=value)


def _eager_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor,
               iou_threshold: float, max_out: int, num_groups: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep, counts = StaticOps().nms(boxes, scores, groups, valid, iou_threshold, max_out, num_groups)
    return keep[:, :k], counts.clamp(max=k)


class _StaticNMS(torch.autograd.Function):
    """Group-wise NMS padded to ``k`` indices; exported as NonMaxSuppression + ScatterND + TopK."""

    @staticmethod
    def forward(ctx: Any, boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor,
                iou_threshold: float, max_out: int, num_groups: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _eager_nms(boxes, scores, groups, valid, iou_threshold, max_out, num_groups, k)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, groups: Any, valid: Any, iou_threshold: float, max_out: int,
                 num_groups: int, k: int) -> tuple[Any, Any]:
        axis1 = _const(g, torch.tensor([1], dtype=torch.int64))
        class_ids = _const(g, torch.arange(num_groups, dtype=torch.int64).view(1, num_groups, 1))
        in_class = g.op("And", g.op("Equal", g.op("Unsqueeze", groups, axis1), class_ids),
                        g.op("Unsqueeze", valid, axis1))
        invalid = _const(g, torch.tensor(_INVALID_SCORE, dtype=torch.float32))
        class_scores = g.op("Where", in_class, g.op("Unsqueeze", scores, axis1), invalid)  # [N, G, M]
        selected = g.op(
            "NonMaxSuppression", boxes, class_scores,
            _const(g, torch.tensor([max_out], dtype=torch.int64)),
            _const(g, torch.tensor([iou_threshold], dtype=torch.float32)),
            _const(g, torch.tensor([NMS_SCORE_THRESHOLD], dtype=torch.float32)),
            center_point_box_i=0,
        )  # [S, 3] (batch, class, box)
        where = g.op("Gather", selected, _const(g, torch.tensor([0, 2], dtype=torch.int64)), axis_i=1)  # [S, 2]
        num_selected = g.op("Slice", g.op("Shape", selected), _const(g, torch.tensor([0])),
                            _const(g, torch.tensor([1])))
        ones = g.op("ConstantOfShape", num_selected, value_t=torch.tensor([1.0], dtype=torch.float32))
        zeros = g.op("ConstantOfShape", g.op("Shape", scores), value_t=torch.tensor([0.0], dtype=torch.float32))
        kept = g.op("ScatterND", zeros, where, ones)  # [N, M] 1.0 where kept
        ranked = g.op("Where", g.op("Cast", kept, to_i=_ONNX_BOOL), scores, invalid)
        _, keep = g.op("TopK", ranked, _const(g, torch.tensor([k], dtype=torch.int64)), axis_i=1, largest_i=1,
                       sorted_i=1, outputs=2)
        total = g.op("ReduceSum", kept, axis1, keepdims_i=0)
        counts = g.op("Min", g.op("Cast", total, to_i=_ONNX_INT64), _const(g, torch.tensor(k, dtype=torch.int64)))
        return keep, counts


class _PluginRoIAlign(torch.autograd.Function):
    """The whole multi-level pooling as one ``maskrcnn_streamer::MultilevelRoIAlign`` node."""

    @staticmethod
    def forward(ctx: Any, f0: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor, f3: torch.Tensor,
                rois: torch.Tensor, params: RoIAlignParams) -> torch.Tensor:
        return multilevel_roi_align([f0, f1, f2, f3], rois, params)

    @staticmethod
    def symbolic(g: Any, f0: Any, f1: Any, f2: Any, f3: Any, rois: Any, params: RoIAlignParams) -> Any:
        attrs = {f"{k}_f" if isinstance(v, float) else f"{k}_i": v for k, v in onnx_attributes(params).items()}
        out = g.op(f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}", f0, f1, f2, f3, rois,
                   plugin_namespace_s=PLUGIN_NAMESPACE, plugin_version_s=PLUGIN_VERSION, **attrs)
        feat_type, roi_type = f0.type(), rois.type()
        r = roi_type.varyingSizes()[0] if roi_type.varyingSizes() else None
        c = feat_type.varyingSizes()[1] if feat_type.varyingSizes() else None
        out.setType(feat_type.with_sizes([r, c, params.output_size, params.output_size]))
        return out


def _axis_taps(start: torch.Tensor, length: torch.Tensor, pooled: int, grid: int, size: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps of the ``pooled × grid`` samples along one axis of each RoI: ``[R, pooled, grid]``.

    Returns the low and high pixel indices (int64, clamped into the map) and their weights,
    zero for samples outside ``[-1, size]`` (torchvision's rule, as :mod:`engines.roi_align`).
    """
    grids = torch.full_like(size, grid)
    coord, _ = axis_samples(start, length, pooled, grids, grid)
    low, high, w_low, w_high, inside = bilinear_axis(coord, size[:, None, None])
    keep = inside.to(coord.dtype)
    return low, high, w_low * keep, w_high * keep


def portable_roi_align(features: Sequence[torch.Tensor], rois: torch.Tensor, params: RoIAlignParams) -> torch.Tensor:
    """Multi-level RoIAlign from standard ONNX operators: ``[R, C, S, S]`` in the features' dtype.

    Equal to :func:`engines.roi_align.multilevel_roi_align` (average pooling, fixed sampling
    ratio) up to float summation order. All levels form one channels-last float32 table
    ``[N * sum(H_l * W_l), C]``; each RoI's level is computed in the graph with the same
    :func:`map_levels`; each of the ``G × G`` samples and 4 bilinear corners is one ``Gather``
    of ``[R, S, S, C]`` rows, weighted and summed. Static shapes throughout; the work is that of
    one RoIAlign, the memory ``[R, S, S, C]`` floats per step.
    """
    if params.mode != "avg" or params.sampling_ratio <= 0:
        raise ValueError(
            "the portable RoIAlign exports average pooling with a fixed sampling ratio (> 0), got "
            f"mode={params.mode!r}, sampling_ratio={params.sampling_ratio}; export with roi_align='plugin'")
    s, g = params.output_size, params.sampling_ratio
    c = features[0].shape[1]
    sizes = [(int(f.shape[2]), int(f.shape[3])) for f in features]
    pixels = [h * w for h, w in sizes]
    table = torch.cat([f.float().permute(0, 2, 3, 1).flatten(1, 2) for f in features], 1).flatten(0, 1)
    rois = rois.float()
    levels = map_levels(rois[:, 1:], params.min_level, params.max_level, params.canonical_scale,
                        params.canonical_level)
    dev = rois.device
    height = torch.tensor([h for h, _ in sizes], device=dev)[levels]
    width = torch.tensor([w for _, w in sizes], device=dev)[levels]
    offset = torch.tensor([sum(pixels[:i]) for i in range(len(pixels))], device=dev)[levels]
    scale = torch.tensor([1.0 / st for st in params.strides], device=dev)[levels]
    x1, y1, rw, rh = roi_geometry(rois, scale, params.aligned)
    y_taps = _axis_taps(y1, rh, s, g, height)
    x_taps = _axis_taps(x1, rw, s, g, width)
    row0 = (rois[:, 0].to(torch.int64) * sum(pixels) + offset)[:, None, None]
    w_row = width[:, None, None]
    acc: torch.Tensor | None = None
    for gy in range(g):
        for gx in range(g):
            for yi, wy in ((y_taps[0], y_taps[2]), (y_taps[1], y_taps[3])):
                for xi, wx in ((x_taps[0], x_taps[2]), (x_taps[1], x_taps[3])):
                    idx = row0 + yi[:, :, gy, None] * w_row + xi[:, None, :, gx]  # [R, S, S]
                    weight = wy[:, :, gy, None] * wx[:, None, :, gx]
                    term = weight[..., None] * table.index_select(0, idx.reshape(-1)).view(*idx.shape, c)
                    acc = term if acc is None else acc + term
    assert acc is not None
    return (acc / float(g * g)).permute(0, 3, 1, 2).to(features[0].dtype)


class GraphOps(StaticOps):
    """``StaticOps`` that export as ONNX graph nodes (see the module docstring)."""

    def __init__(self, roi_align: RoIAlignKind = "onnx") -> None:
        if roi_align not in ("plugin", "onnx"):
            raise ValueError(f"roi_align must be 'plugin' or 'onnx', got {roi_align!r}")
        self.roi_align_kind = roi_align

    def nms(self, boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor,
            iou_threshold: float, max_out: int, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(max_out, int(boxes.shape[1]))
        keep, counts = _StaticNMS.apply(boxes.float(), scores.float(), groups, valid, float(iou_threshold),
                                        int(max_out), int(num_groups), k)
        return keep, counts

    def roi_align(self, feats: list[torch.Tensor], rois: torch.Tensor, params: RoIAlignParams) -> torch.Tensor:
        if len(feats) != params.max_level - params.min_level + 1:
            raise ValueError(f"RoIAlign over levels {params.min_level}..{params.max_level} needs one feature map "
                             f"per level, got {len(feats)}")
        if self.roi_align_kind == "onnx":
            return portable_roi_align(feats, rois, params)
        if len(feats) != NUM_LEVELS:
            raise ValueError(f"the RoIAlign plugin pools exactly {NUM_LEVELS} levels, got {len(feats)}; "
                             "export with roi_align='onnx'")
        out: torch.Tensor = _PluginRoIAlign.apply(*feats, rois.float(), params)
        return out
