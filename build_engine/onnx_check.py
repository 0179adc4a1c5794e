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
from onnx import TensorProto, numpy_helper

from build_engine.plugin_spec import (
    PLUGIN_NAME,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    params_from_attributes,
)

_F = ("FP32", "FP16", "BF16")
_FI = (*_F, "INT32", "INT64")
_FIB = (*_FI, "BOOL")
_TYPE_GROUPS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("BOOL",): ("And", "Not", "Or", "Xor"),
    ("FP32", "FP16"): ("DeformConv", "GridSample", "Mish", "NonMaxSuppression", "NonZero", "RoiAlign"),
    ("INT8", "FP8", "INT4"): ("DequantizeLinear",),
    ("FP32", "FP16", "BF16", "FP8", "INT32", "INT64"): ("Mean",),
    ("FP32", "FP16", "BF16", "INT8", "INT32", "INT64"): ("Gelu",),
    (*_FIB, "UINT8"): ("Cast", "CastLike"),
    _F: (
        "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Ceil", "Celu",
        "Clip", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "Dropout", "Einsum", "Elu", "Erf", "Exp", "Floor",
        "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "GroupNormalization", "GRU", "HardSigmoid",
        "HardSwish", "Hardmax", "ImageScaler", "InstanceNormalization", "IsInf", "LayerNormalization", "LeakyRelu",
        "Log", "LogSoftmax", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "MaxPool",
        "MeanVarianceNormalization", "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomNormal",
        "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Reciprocal", "Resize", "RNN", "Round",
        "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Tan",
        "Tanh", "ThresholdedRelu", "Upsample",
    ),
    _FI: (
        "Abs", "Add", "ArgMax", "ArgMin", "DepthToSpace", "Div", "Equal", "Greater", "GreaterOrEqual", "IsNaN",
        "Less", "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Pad", "Range", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
        "ReduceSumSquare", "Relu", "Scatter", "ScatterElements", "ScatterND", "Shrink", "Sign", "SpaceToDepth",
        "Sub", "Sum", "TopK",
    ),
    _FIB: (
        "Concat", "Constant", "ConstantOfShape", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements",
        "GatherND", "Identity", "If", "Loop", "OneHot", "Reshape", "ReverseSequence", "Shape", "Size", "Slice",
        "Split", "Squeeze", "Tile", "Transpose", "Trilu", "Unsqueeze", "Where",
    ),
}
TENSORRT_OP_TYPES: dict[str, frozenset[str]] = {
    op: frozenset(types) for types, ops in _TYPE_GROUPS.items() for op in ops
}
"""ONNX operators (default domain) TensorRT's ONNX parser imports, each with the element types its main
type constraint (``T``) may take. Source: the "Y" rows of onnx-tensorrt's ``docs/operators.md`` at the
"ONNX-TensorRT 10.1 GA release" commit (96e7811), which covers opsets 9..20; later 10.x/11.x parsers only
add operators and types, so this is a floor. (That table's ``ConstantOfShape`` row reads "INF64": INT64.)
UINT8 appears for ``Cast`` only; :func:`check_uint8` adds the parser's input/output rule."""
TENSORRT_SUPPORTED_OPS: frozenset[str] = frozenset(TENSORRT_OP_TYPES)
"""The operator names of :data:`TENSORRT_OP_TYPES`."""
TENSORRT_OPSETS = range(9, 21)
"""Default-domain opsets the 10.1 operator table covers (9..20 inclusive)."""

_ONNX_TYPE_NAMES: dict[int, str] = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL", TensorProto.DOUBLE: "DOUBLE", TensorProto.INT16: "INT16",
    TensorProto.UINT16: "UINT16", TensorProto.UINT32: "UINT32", TensorProto.UINT64: "UINT64",
    TensorProto.STRING: "STRING", TensorProto.FLOAT8E4M3FN: "FP8", TensorProto.INT4: "INT4",
}

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


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type (``TensorProto`` enum) of every tensor ONNX type inference can name."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in _STANDARD_DOMAINS:
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def _type_name(elem_type: int) -> str:
    return _ONNX_TYPE_NAMES.get(elem_type) or str(onnx.TensorProto.DataType.Name(elem_type))


def check_opset(model: onnx.ModelProto | str | Path) -> list[str]:
    """The default-domain opset lies in :data:`TENSORRT_OPSETS` (what the operator table covers)."""
    versions = [o.version for o in _model(model).opset_import if o.domain in _STANDARD_DOMAINS]
    if not versions:
        return ["the graph imports no default-domain (ai.onnx) opset"]
    lo, hi = TENSORRT_OPSETS[0], TENSORRT_OPSETS[-1]
    return [f"default-domain opset must lie in {lo}..{hi} (TensorRT's operator table), got {v}"
            for v in versions if v not in TENSORRT_OPSETS]


def check_uint8(model: onnx.ModelProto | str | Path) -> list[str]:
    """UINT8 tensors only where TensorRT's parser takes them: a graph input whose every consumer is a
    ``Cast``, or a graph output. Anything else ("UINT8 intermediate tensors") fails at parse time."""
    m = _model(model)
    types = _elem_types(m)
    inputs = {v.name for v in m.graph.input}
    outputs = {v.name for v in m.graph.output}
    initializers = {t.name for t in m.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in m.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    problems = []
    for name, elem_type in types.items():
        if elem_type != TensorProto.UINT8 or name in outputs:
            continue
        users = consumers.get(name, [])
        bad = [n for n in users if not (n.op_type == "Cast" and n.domain in _STANDARD_DOMAINS)]
        if name in inputs and not bad:
            continue
        where = "a graph input" if name in inputs else "an initializer" if name in initializers \
            else "an intermediate tensor"
        used_by = ", ".join(_label(n) for n in (bad or users)) or "nothing"
        problems.append(f"tensor {name!r} is UINT8 as {where} used by {used_by}: TensorRT accepts UINT8 only as "
                        "a graph input that feeds Cast nodes only, or as a graph output (cast to float first)")
    return problems


def _formal_type_strs(node: onnx.NodeProto, opset: int) -> tuple[list[str | None], list[str | None]]:
    """The schema's type string (``"T"``, ``"tensor(int64)"``...) of each actual input and output."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return [None] * len(node.input), [None] * len(node.output)

    def expand(formals: Any, count: int) -> list[str | None]:
        if not formals:
            return [None] * count
        return [formals[min(i, len(formals) - 1)].type_str for i in range(count)]

    return expand(schema.inputs, len(node.input)), expand(schema.outputs, len(node.output))


def check_types(model: onnx.ModelProto | str | Path) -> list[str]:
    """Every standard node's main-type tensors (the schema's ``T``, else the first input's type; for
    ``Cast`` also the output) have an element type TensorRT supports for that operator
    (:data:`TENSORRT_OP_TYPES`): this is where INT64, DOUBLE or UINT8 are refused. Our plugin nodes take
    float32/float16 features and float32 rois."""
    m = _model(model)
    types = _elem_types(m)
    opset = max((o.version for o in m.opset_import if o.domain in _STANDARD_DOMAINS), default=TENSORRT_OPSETS[-1])
    problems = []
    for node in m.graph.node:
        if (node.domain, node.op_type) in OUR_OPS:
            problems += _plugin_types(node, types)
            continue
        allowed = TENSORRT_OP_TYPES.get(node.op_type) if node.domain in _STANDARD_DOMAINS else None
        if allowed is None:
            continue  # reported by check_tensorrt_ops
        ins, outs = _formal_type_strs(node, opset)
        main = "T" if "T" in ins + outs else (ins[0] if ins else outs[0] if outs else None)
        checked = [(n, f) for n, f in zip(node.input, ins, strict=True) if n and f == main]
        checked += [(n, f) for n, f in zip(node.output, outs, strict=True) if n and f == main]
        if node.op_type in ("Cast", "CastLike"):
            checked += [(n, "T2") for n in node.output[:1]]
        bad = {name: _type_name(types[name]) for name, _ in checked
               if name in types and _type_name(types[name]) not in allowed}
        if bad:
            got = ", ".join(f"{name!r} is {t}" for name, t in bad.items())
            problems.append(f"{_label(node)}: tensor {got}; TensorRT's {node.op_type} takes "
                            f"{', '.join(sorted(allowed))}")
    return problems


def _plugin_types(node: onnx.NodeProto, types: dict[str, int]) -> list[str]:
    feats = [types.get(n) for n in node.input[:-1]]
    problems = []
    if any(t is not None for t in feats) and (len(set(feats)) != 1 or feats[0] not in (TensorProto.FLOAT,
                                                                                         TensorProto.FLOAT16)):
        got = [_type_name(t) if t is not None else "?" for t in feats]
        problems.append(f"{_label(node)}: feature maps must all be FP32 or all FP16, got {got}")
    rois = types.get(node.input[-1]) if node.input else None
    if rois is not None and rois != TensorProto.FLOAT:
        problems.append(f"{_label(node)}: rois must be FP32, got {_type_name(rois)}")
    return problems


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
    """All TensorRT checks above together (opset, operators, types, UINT8, plugin nodes, TopK, NMS)."""
    m = _model(model)
    return [*check_opset(m), *check_tensorrt_ops(m), *check_types(m), *check_uint8(m), *check_plugin_nodes(m),
            *check_topk(m), *check_nms(m)]
