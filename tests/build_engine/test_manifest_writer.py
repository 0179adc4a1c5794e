"""Build-time manifest: facts read from a real ONNX file, written next to the engine."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from build_engine.manifest import build_manifest, onnx_io_and_plugins, sha256_file, write_manifest
from build_engine.plugin_spec import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION, onnx_attributes
from engines.manifest import (
    BatchProfile,
    PluginRef,
    Requirements,
    RuntimeEnvironment,
    TensorSpec,
    check_compatible,
    manifest_path_for,
    read_manifest,
)
from engines.roi_align import RoIAlignParams

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

ENV = RuntimeEnvironment(tensorrt_version="11.4.0.106", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                         driver_version="580.65.06", cuda_version="13.0", os="linux")


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    """A graph with a dynamic batch, an initializer and one RoIAlign plugin node."""
    feats = [helper.make_tensor_value_info(f"p{k}", TensorProto.FLOAT, ["N", 256, 256 // 2**k, 256 // 2**k])
             for k in range(2, 6)]
    rois = helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["R", 5])
    pooled = helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["R", 256, 7, 7])
    attributes: dict[str, Any] = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION,
                                  **onnx_attributes(RoIAlignParams())}
    node = helper.make_node(PLUGIN_NAME, ["p2", "p3", "p4", "p5", "rois"], ["pooled"], domain=PLUGIN_NAMESPACE,
                            **attributes)
    weight = helper.make_tensor("unused_weight", TensorProto.FLOAT, [1], [0.5])
    graph = helper.make_graph([node], "pooler", [*feats, rois], [pooled], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(PLUGIN_NAMESPACE, 1)])
    path = tmp_path / "pooler.onnx"
    onnx.save(model, str(path))
    return path


def test_onnx_io_and_plugins_are_read_from_the_graph(onnx_file: Path) -> None:
    inputs, outputs, plugins = onnx_io_and_plugins(onnx_file)

    assert [i.name for i in inputs] == ["p2", "p3", "p4", "p5", "rois"]
    assert inputs[0] == TensorSpec("p2", "float32", (-1, 256, 64, 64))
    assert outputs == (TensorSpec("pooled", "float32", (-1, 256, 7, 7)),)
    assert plugins == (PluginRef(PLUGIN_NAMESPACE, PLUGIN_NAME, PLUGIN_VERSION),)


def test_manifest_is_written_next_to_the_engine_and_reads_back(onnx_file: Path, tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights" * 1000)
    argv = ["/usr/bin/build-engine", "--onnx", str(onnx_file), "--precision", "fp16", "--max-batch", "8"]
    manifest = build_manifest(
        onnx_path=onnx_file, weights_path=weights, precision="fp16", batch=BatchProfile(1, 4, 8),
        input_size=(800, 1344), class_names=["__background__", "person"],
        preprocessing={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, argv=argv, env=ENV,
    )

    path = write_manifest(manifest, tmp_path / "engines" / "model.plan")

    assert path == manifest_path_for(tmp_path / "engines" / "model.plan") and path.is_file()
    back = read_manifest(path)
    assert back == manifest
    assert back.build.weights_sha256 == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert back.build.onnx_sha256 == sha256_file(onnx_file)
    assert back.build_command == ("build-engine", *argv[1:])
    plugin_id = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
    assert check_compatible(back, ENV, Requirements(precision="fp16", batch_size=4, plugins={plugin_id: PLUGIN_VERSION})) == []
    assert list(tmp_path.joinpath("engines").iterdir()) == [path]  # no temp files left behind
