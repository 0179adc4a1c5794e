"""Checks of an exported graph: ONNX validity and what TensorRT's ONNX parser will accept.

Each ``check_*`` function returns a list of problems (empty = fine), one line per node,
naming the node, the rule and the value found, so that ``build-engine`` can print them all
before a long TensorRT build fails on the first one::

    problems = tensorrt_problems(onnx.load("model.onnx"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from build_engine.plugin_spec import (
    PLUGIN_NAME,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    params_from_attributes,
)

TENSORRT_SUPPORTED_OPS: frozenset[str] = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
    "AveragePool", "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv", "DepthToSpace",
    "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike",
    "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool",
    "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU",
    "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "ImageScaler", "InstanceNormalization",
    "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop",
    "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean",
    "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not",
    "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomNormal",
    "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
    "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RNN", "RoiAlign", "Round",
    "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid",
    "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split",
    "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu",
    "Unsqueeze", "Upsample", "Where", "Xor",
})
"""ONNX operators (default domain) the TensorRT 10 ONNX parser imports natively: the "Y" rows of
onnx-tensorrt's ``docs/operators.md`` (10.x). Restrictions that matter here are checked below."""

TOPK_MAX_K = 3840
"""TensorRT's largest TopK ``K`` (also the per-class limit inside its NMS)."""
NMS_MAX_BOXES = 5000
"""TensorRT's NMS TopK box limit: boxes considered per batch item (2000 on SM 5.3/6.2)."""
OUR_OPS = frozenset({(PLUGIN_NAMESPACE, PLUGIN_NAME)})
"""Custom ``(domain, op_type)`` nodes that our own TensorRT plugins implement."""
_STANDARD_DOMAINS = ("", "ai.onnx")


def _model(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _label(node: onnx.NodeProto) -> str:
    kind = f"{node.domain}::{node.op_type}" if node.domain not in _STANDARD_DOMAINS else node.op_type
    return f"node {node.name or '(unnamed)'} ({kind})"


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values of initializers and ``Constant`` node outputs, by tensor name."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in _STANDARD_DOMAINS:
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
    return values


def check_onnx(model: onnx.ModelProto | str | Path) -> None:
    """``onnx.checker`` with full shape/type inference; raises ``onnx.checker.ValidationError``."""
    onnx.checker.check_model(_model(model), full_check=True)


def check_tensorrt_ops(model: onnx.ModelProto | str | Path) -> list[str]:
    """Nodes TensorRT cannot import: standard operators outside :data:`TENSORRT_SUPPORTED_OPS` and
    custom-domain nodes other than :data:`OUR_OPS`."""
    problems = []
    for node in _model(model).graph.node:
        if node.domain in _STANDARD_DOMAINS:
            if node.op_type not in TENSORRT_SUPPORTED_OPS:
                problems.append(f"{_label(node)}: not a TensorRT-supported ONNX operator")
        elif (node.domain, node.op_type) not in OUR_OPS:
            problems.append(f"{_label(node)}: custom operator without a plugin of ours")
    return problems


def check_plugin_nodes(model: onnx.ModelProto | str | Path) -> list[str]:
    """Our RoIAlign plugin nodes: five inputs, namespace/version attributes, complete and valid
    attributes (:func:`build_engine.plugin_spec.params_from_attributes`)."""
    problems = []
    for node in _model(model).graph.node:
        if (node.domain, node.op_type) not in OUR_OPS:
            continue
        attrs: dict[str, Any] = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        namespace = attrs.pop("plugin_namespace", b"")
        version = attrs.pop("plugin_version", b"1")
        if namespace != PLUGIN_NAMESPACE.encode():
            problems.append(f"{_label(node)}: plugin_namespace must be {PLUGIN_NAMESPACE!r}, got {namespace!r}")
        if version != PLUGIN_VERSION.encode():
            problems.append(f"{_label(node)}: plugin_version must be {PLUGIN_VERSION!r}, got {version!r}")
        if len(node.input) != 5:
            problems.append(f"{_label(node)}: needs 5 inputs (4 feature maps, rois), got {len(node.input)}")
        try:
            params_from_attributes(attrs)
        except ValueError as e:
            problems.append(f"{_label(node)}: {e}")
    return problems


def check_topk(model: onnx.ModelProto | str | Path) -> list[str]:
    """Every ``TopK`` has a constant ``K <= TOPK_MAX_K`` and ``sorted=1`` (TensorRT's rules)."""
    m = _model(model)
    consts = _constants(m)
    problems = []
    for node in m.graph.node:
        if node.op_type != "TopK" or node.domain not in _STANDARD_DOMAINS:
            continue
        k = consts.get(node.input[1])
        if k is None:
            problems.append(f"{_label(node)}: K must be a constant for TensorRT, it is computed ({node.input[1]})")
        elif int(k.reshape(-1)[0]) > TOPK_MAX_K:
            problems.append(f"{_label(node)}: K = {int(k.reshape(-1)[0])} > TensorRT's limit {TOPK_MAX_K}")
        sorted_attr = next((a.i for a in node.attribute if a.name == "sorted"), 1)
        if sorted_attr != 1:
            problems.append(f"{_label(node)}: sorted must be 1 for TensorRT, got {sorted_attr}")
    return problems


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Static/symbolic shapes of all tensors (ONNX Runtime's symbolic shape inference; custom ops
    get their first input's rank)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    shapes: dict[str, list[int | str]] = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    return shapes


def check_nms(model: onnx.ModelProto | str | Path) -> list[str]:
    """Every ``NonMaxSuppression``: constant limits (TensorRT needs initializers) and a static box
    count ``<= NMS_MAX_BOXES`` per image."""
    m = _model(model)
    nodes = [n for n in m.graph.node if n.op_type == "NonMaxSuppression" and n.domain in _STANDARD_DOMAINS]
    if not nodes:
        return []
    consts = _constants(m)
    shapes = _inferred_shapes(m)
    problems = []
    for node in nodes:
        for i, what in ((2, "max_output_boxes_per_class"), (3, "iou_threshold"), (4, "score_threshold")):
            if len(node.input) <= i or node.input[i] not in consts:
                problems.append(f"{_label(node)}: {what} must be a constant input for TensorRT")
        boxes = shapes.get(node.input[0], [])
        count = boxes[1] if len(boxes) == 3 else None
        if not isinstance(count, int):
            problems.append(f"{_label(node)}: the number of boxes must be static, got shape {boxes}")
        elif count > NMS_MAX_BOXES:
            problems.append(f"{_label(node)}: {count} boxes per image > TensorRT's NMS limit {NMS_MAX_BOXES}")
    return problems


def tensorrt_problems(model: onnx.ModelProto | str | Path) -> list[str]:
    """All TensorRT checks above together (operators, plugin nodes, TopK, NMS)."""
    m = _model(model)
    return [*check_tensorrt_ops(m), *check_plugin_nodes(m), *check_topk(m), *check_nms(m)]
