"""ONNX export of the static model (tiny real model): graph validity, I/O, plugin nodes, TensorRT rules, fp16.

The numeric equality of the portable graph with PyTorch is in ``tests/engines/test_ort_runner.py``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from build_engine.export import ExportInfo, export_onnx
from build_engine.onnx_check import (
    NMS_MAX_BOXES,
    TENSORRT_OP_TYPES,
    TENSORRT_SUPPORTED_OPS,
    TOPK_MAX_K,
    check_nms,
    check_onnx,
    check_opset,
    check_plugin_nodes,
    check_tensorrt_ops,
    check_topk,
    check_types,
    check_uint8,
    tensorrt_problems,
)
from build_engine.plugin_spec import (
    ATTRIBUTE_NAMES,
    PLUGIN_ID,
    PLUGIN_NAME,
    PLUGIN_NAMESPACE,
    onnx_attributes,
)
from engines.model.config import MaskRCNNConfig
from engines.static_io import GraphInfo
from engines.weights import LoadedModel, load_model

SOURCE_HW = (96, 128)  # the tiny model (min_size 128) resizes it to 128x170, padded to 128x192


@pytest.fixture(scope="module")
def loaded(tiny_model_path: Path) -> LoadedModel:
    return load_model(tiny_model_path)


@pytest.fixture(scope="module")
def exported(loaded: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExportInfo]:
    out = tmp_path_factory.mktemp("export")
    infos = {}
    for kind, precision in (("onnx", "fp32"), ("plugin", "fp32"), ("plugin", "fp16")):
        infos[f"{kind}-{precision}"] = export_onnx(
            loaded.model, out / f"{kind}-{precision}.onnx", source_hw=SOURCE_HW, roi_align=kind,  # type: ignore[arg-type]
            precision=precision, class_names=loaded.class_names, name=loaded.name)  # type: ignore[arg-type]
    return infos


def _graph(info: ExportInfo) -> onnx.ModelProto:
    return onnx.load(str(info.path))


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor (ONNX type inference; weights from the initializers)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        types[v.name] = v.type.tensor_type.elem_type
    return types


@pytest.mark.parametrize("key", ["onnx-fp32", "plugin-fp32", "plugin-fp16"])
def test_graph_io_and_checker(exported: dict[str, ExportInfo], loaded: LoadedModel, key: str) -> None:
    info = exported[key]
    model = _graph(info)
    check_onnx(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == info.opset == 17
    (inp,) = model.graph.input
    assert inp.name == "frames" and inp.type.tensor_type.elem_type == TensorProto.UINT8
    assert _dims(inp) == ["batch", 96, 128, 3]
    d = loaded.model.cfg.detections_per_img
    expected = {"counts": (TensorProto.INT32, ["batch"]), "boxes": (TensorProto.FLOAT, ["batch", d, 4]),
                "scores": (TensorProto.FLOAT, ["batch", d]), "labels": (TensorProto.INT32, ["batch", d]),
                "mask_probs": (TensorProto.FLOAT, ["batch", d, 28, 28])}
    assert [o.name for o in model.graph.output] == list(expected)
    for o in model.graph.output:
        assert (o.type.tensor_type.elem_type, _dims(o)) == expected[o.name], o.name
    assert info.input.shape == (-1, 96, 128, 3) and info.outputs[1].shape == (-1, d, 4)
    assert (info.network_size, info.padded_size, info.frame_size) == ((128, 170), (128, 192), SOURCE_HW)
    assert len(info.sha256) == 64
    meta = GraphInfo.from_metadata({p.key: p.value for p in model.metadata_props})
    assert meta.class_names == loaded.class_names and meta.name == loaded.name
    assert (meta.input_mode, meta.frame_size, meta.roi_align, meta.precision) == (
        "source", SOURCE_HW, info.roi_align, info.precision)
    assert MaskRCNNConfig.from_dict(meta.config) == loaded.model.cfg


def test_plugin_graph_pools_with_one_node_per_pooler(exported: dict[str, ExportInfo], loaded: LoadedModel) -> None:
    info = exported["plugin-fp32"]
    model = _graph(info)
    nodes = [n for n in model.graph.node if n.op_type == PLUGIN_NAME]
    assert len(nodes) == 2, "one node for the box pooler, one for the mask pooler"
    assert info.plugin == (PLUGIN_ID, "1")
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["RoiAlign"] == 0 and ops["NonZero"] == 0, "the plugin replaces the whole multi-level pooling"
    types = _elem_types(model)
    for node, params in zip(nodes, (loaded.model.box_roi, loaded.model.mask_roi), strict=True):
        assert node.domain == PLUGIN_NAMESPACE and len(node.input) == 5
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.pop("plugin_namespace") == PLUGIN_NAMESPACE.encode() and attrs.pop("plugin_version") == b"1"
        assert set(attrs) == set(ATTRIBUTE_NAMES)
        assert attrs == onnx_attributes(params)
        assert types[node.input[4]] == TensorProto.FLOAT, "rois are float32"
    assert [helper.get_attribute_value(a) for n in nodes for a in n.attribute if a.name == "output_size"] == [7, 14]
    assert check_plugin_nodes(model) == []


def test_portable_graph_uses_standard_operators_only(exported: dict[str, ExportInfo]) -> None:
    info = exported["onnx-fp32"]
    model = _graph(info)
    assert info.plugin is None
    assert {n.domain for n in model.graph.node} <= {""}
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}


@pytest.mark.parametrize("key", ["onnx-fp32", "plugin-fp32", "plugin-fp16"])
def test_tensorrt_rules(exported: dict[str, ExportInfo], key: str) -> None:
    model = _graph(exported[key])
    assert tensorrt_problems(model) == []
    frames = [n for n in model.graph.node if "frames" in n.input]
    assert [n.op_type for n in frames] == ["Cast"], "uint8 frames feed a Cast only (TensorRT: no UINT8 intermediates)"
    other = {n.op_type for n in model.graph.node if n.domain == ""}
    assert other <= TENSORRT_SUPPORTED_OPS
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
               if n.op_type == "Constant" and n.attribute[0].name == "value"}
    ks = sorted(int(consts[n.input[1]].reshape(-1)[0]) for n in model.graph.node if n.op_type == "TopK")
    # RPN: per-level pre-NMS top-n (4608, 1152, 288, 72, 18 anchors), post-NMS 1000; box head: 3840 candidates,
    # 100 detections; each NMS picks its kept boxes with one more TopK.
    assert ks == [18, 72, 100, 288, 1000, 1000, 1000, 3840]
    assert max(ks) <= TOPK_MAX_K
    nms = [n for n in model.graph.node if n.op_type == "NonMaxSuppression"]
    assert len(nms) == 2
    classes = [int(consts[n.input[2]].reshape(-1)[0]) for n in nms]
    assert classes == [1000, 100], "max_output_boxes_per_class"


def test_fp16_graph_keeps_sensitive_parts_in_fp32(exported: dict[str, ExportInfo]) -> None:
    model = _graph(exported["plugin-fp16"])
    types = _elem_types(model)
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")]
    assert convs and all(types[n.input[1]] == TensorProto.FLOAT16 for n in convs), "weights in fp16"
    assert all(types[n.output[0]] == TensorProto.FLOAT16 for n in convs)
    for node in model.graph.node:
        if node.op_type == PLUGIN_NAME:
            assert [types[i] for i in node.input] == [TensorProto.FLOAT16] * 4 + [TensorProto.FLOAT]
            assert types[node.output[0]] == TensorProto.FLOAT16
        if node.op_type == "NonMaxSuppression":
            assert types[node.input[0]] == types[node.input[1]] == TensorProto.FLOAT, "NMS inputs in fp32"
        if node.op_type in ("Sigmoid", "Softmax", "Exp"):
            assert types[node.input[0]] == TensorProto.FLOAT, f"{node.name}: scores, decoding, mask sigmoid in fp32"
    fp32 = _graph(exported["plugin-fp32"])
    assert {t.data_type for t in fp32.graph.initializer if t.dims and len(t.dims) == 4} == {TensorProto.FLOAT}


def test_export_arguments_are_checked(loaded: LoadedModel, tmp_path: Path) -> None:
    out = tmp_path / "x.onnx"
    with pytest.raises(ValueError, match="exactly one of source_hw"):
        export_onnx(loaded.model, out)
    with pytest.raises(ValueError, match="exactly one of source_hw"):
        export_onnx(loaded.model, out, source_hw=(96, 128), input_hw=(128, 170))
    with pytest.raises(ValueError, match=r"opset must be >= 17 .*got 16"):
        export_onnx(loaded.model, out, source_hw=(96, 128), opset=16)
    with pytest.raises(ValueError, match="3 class names for a 5-class model"):
        export_onnx(loaded.model, out, source_hw=(96, 128), class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="roi_align must be 'plugin' or 'onnx'"):
        export_onnx(loaded.model, out, source_hw=(96, 128), roi_align="torchvision")  # type: ignore[arg-type]
    assert not out.exists()


# ----------------------------------------------------------------------------- checks on hand-made graphs
def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(PLUGIN_NAMESPACE, 1)])


def _value(name: str, dtype: int, shape: list[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def test_checks_report_topk_over_limit_and_computed_k() -> None:
    x = _value("x", TensorProto.FLOAT, [1, 6000])
    k_big = numpy_helper.from_array(np.array([3841], np.int64), "k_big")
    nodes = [helper.make_node("TopK", ["x", "k_big"], ["v", "i"], name="big"),
             helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Slice", ["s", "one", "two"], ["k_dyn"]),
             helper.make_node("TopK", ["x", "k_dyn"], ["v2", "i2"], name="computed", sorted=0)]
    inits = [k_big, numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([2], np.int64), "two")]
    model = _model(nodes, [x], [_value("v", TensorProto.FLOAT, None), _value("v2", TensorProto.FLOAT, None)], inits)
    problems = check_topk(model)
    assert any("node big" in p and "K = 3841 > TensorRT's limit 3840" in p for p in problems)
    assert any("node computed" in p and "K must be a constant" in p for p in problems)
    assert any("node computed" in p and "sorted must be 1" in p for p in problems)


def test_checks_report_unsupported_and_foreign_custom_operators() -> None:
    x = _value("x", TensorProto.FLOAT, [4])
    nodes = [helper.make_node("Unique", ["x"], ["u"], name="uniq"),
             helper.make_node("Mystery", ["x"], ["y"], name="alien", domain="vendor"),
             helper.make_node("Relu", ["x"], ["r"], name="fine")]
    model = _model(nodes, [x], [_value("y", TensorProto.FLOAT, None)])
    problems = check_tensorrt_ops(model)
    assert len(problems) == 2
    assert "node uniq (Unique): not a TensorRT-supported ONNX operator" in problems
    assert "node alien (vendor::Mystery): custom operator without a plugin of ours" in problems


def test_checks_report_nms_over_box_limit_and_computed_threshold() -> None:
    n = NMS_MAX_BOXES + 1
    boxes, scores = _value("boxes", TensorProto.FLOAT, [1, n, 4]), _value("scores", TensorProto.FLOAT, [1, 1, n])
    thr = _value("thr", TensorProto.FLOAT, [1])
    inits = [numpy_helper.from_array(np.array([10], np.int64), "max_out"),
             numpy_helper.from_array(np.array([0.5], np.float32), "iou")]
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "thr"], ["sel"], name="nms")
    model = _model([node], [boxes, scores, thr], [_value("sel", TensorProto.INT64, None)], inits)
    problems = check_nms(model)
    assert problems == ["node nms (NonMaxSuppression): score_threshold must be a constant input for TensorRT",
                        f"node nms (NonMaxSuppression): {n} boxes per image > TensorRT's NMS limit {NMS_MAX_BOXES}"]


def test_checks_report_incomplete_plugin_attributes() -> None:
    from engines.roi_align import RoIAlignParams

    attrs: dict[str, Any] = dict(onnx_attributes(RoIAlignParams()))
    del attrs["sampling_ratio"]
    feats = [_value(f"f{i}", TensorProto.FLOAT, [1, 8, 32 >> i, 32 >> i]) for i in range(4)]
    node = helper.make_node(PLUGIN_NAME, ["f0", "f1", "f2", "f3", "rois"], ["out"], name="pool",
                            domain=PLUGIN_NAMESPACE, plugin_namespace=PLUGIN_NAMESPACE, plugin_version="2", **attrs)
    model = _model([node], [*feats, _value("rois", TensorProto.FLOAT, [3, 5])], [_value("out", TensorProto.FLOAT, None)])
    problems = check_plugin_nodes(model)
    assert len(problems) == 2
    assert "plugin_version must be '1', got b'2'" in problems[0]
    assert "missing ['sampling_ratio']" in problems[1]
    assert check_tensorrt_ops(model) == [], "our own plugin op is not reported as unsupported"


def test_uint8_only_as_an_input_feeding_cast_or_an_output() -> None:
    frames = _value("frames", TensorProto.UINT8, [1, 4, 4, 3])
    transposed_first = [helper.make_node("Transpose", ["frames"], ["t"], name="nchw", perm=[0, 3, 1, 2]),
                        helper.make_node("Cast", ["t"], ["x"], name="to_float", to=TensorProto.FLOAT)]
    bad = _model(transposed_first, [frames], [_value("x", TensorProto.FLOAT, None)])
    problems = check_uint8(bad)
    assert any("'frames' is UINT8 as a graph input used by node nchw (Transpose)" in p for p in problems)
    assert any("'t' is UINT8 as an intermediate tensor used by node to_float (Cast)" in p for p in problems)
    cast_first = [helper.make_node("Cast", ["frames"], ["f"], name="to_float", to=TensorProto.FLOAT),
                  helper.make_node("Transpose", ["f"], ["x"], name="nchw", perm=[0, 3, 1, 2]),
                  helper.make_node("Cast", ["x"], ["out_u8"], name="back", to=TensorProto.UINT8)]
    good = _model(cast_first, [frames], [_value("x", TensorProto.FLOAT, None),
                                         _value("out_u8", TensorProto.UINT8, None)])
    assert check_uint8(good) == [] and check_types(good) == []


def test_types_outside_tensorrts_table_are_refused() -> None:
    x = _value("x", TensorProto.INT64, [4])
    d = _value("d", TensorProto.DOUBLE, [4])
    nodes = [helper.make_node("Sigmoid", ["x_f"], ["s"], name="ok"),
             helper.make_node("Cast", ["x"], ["x_f"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Conv", ["d", "w"], ["c"], name="conv_double"),
             helper.make_node("MatMul", ["x", "x"], ["mm"], name="int_matmul"),
             helper.make_node("Gather", ["x", "idx"], ["g"], name="int_gather")]  # INT64 data: accepted
    inits = [numpy_helper.from_array(np.zeros((1, 1, 1), np.float64), "w"),
             numpy_helper.from_array(np.array([0], np.int64), "idx")]
    model = _model(nodes, [x, d], [_value(o, TensorProto.FLOAT, None) for o in ("s", "c")]
                   + [_value(o, TensorProto.INT64, None) for o in ("mm", "g")], inits)
    problems = check_types(model)
    assert len(problems) == 2, problems
    assert problems[0] == ("node conv_double (Conv): tensor 'd' is DOUBLE, 'w' is DOUBLE; "
                           "TensorRT's Conv takes BF16, FP16, FP32")
    assert any("node int_matmul (MatMul): tensor 'x' is INT64" in p for p in problems)
    assert TENSORRT_OP_TYPES["Gather"] >= {"INT64", "BOOL"} and "UINT8" not in TENSORRT_OP_TYPES["Transpose"]


def test_opset_outside_the_operator_table_is_refused() -> None:
    x = _value("x", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [_value("y", TensorProto.FLOAT, [4])])
    assert check_opset(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])) == []
    new = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    assert check_opset(new) == ["default-domain opset must lie in 9..20 (TensorRT's operator table), got 23"]


def test_plugin_node_types_are_checked() -> None:
    from engines.roi_align import RoIAlignParams

    feats = [_value(f"f{i}", TensorProto.FLOAT16, [1, 8, 32 >> i, 32 >> i]) for i in range(3)]
    feats.append(_value("f3", TensorProto.FLOAT, [1, 8, 4, 4]))
    node = helper.make_node(PLUGIN_NAME, ["f0", "f1", "f2", "f3", "rois"], ["out"], name="pool",
                            domain=PLUGIN_NAMESPACE, plugin_namespace=PLUGIN_NAMESPACE, plugin_version="1",
                            **dict[str, Any](onnx_attributes(RoIAlignParams())))
    model = _model([node], [*feats, _value("rois", TensorProto.FLOAT16, [3, 5])],
                   [_value("out", TensorProto.FLOAT16, None)])
    problems = check_types(model)
    assert problems == ["node pool (maskrcnn_streamer::MultilevelRoIAlign): feature maps must all be FP32 or all "
                        "FP16, got ['FP16', 'FP16', 'FP16', 'FP32']",
                        "node pool (maskrcnn_streamer::MultilevelRoIAlign): rois must be FP32, got FP16"]


def test_a_uint8_transpose_regression_in_the_real_graph_fails(loaded: LoadedModel, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre-fix preprocessing (permute on uint8, then cast) exported through build_engine.export is refused."""
    import torch

    import engines.model.maskrcnn as maskrcnn

    def permute_then_cast(frames: torch.Tensor) -> torch.Tensor:
        return frames.permute(0, 3, 1, 2).to(torch.float32) / 255

    monkeypatch.setattr(maskrcnn, "to_float_nchw", permute_then_cast)
    info = export_onnx(loaded.model, tmp_path / "old.onnx", source_hw=SOURCE_HW, roi_align="plugin")
    problems = tensorrt_problems(_graph(info))
    assert any("'frames' is UINT8 as a graph input used by" in p and "(Transpose)" in p for p in problems), problems
