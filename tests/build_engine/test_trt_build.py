"""The engine build's pure parts (profile, flags, levels, messages). The parts that need TensorRT and a
GPU (network flags set, engines built and loaded) are the ``gpu`` tests in tests/gpu."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from build_engine.plugin_spec import PLUGIN_NAME, PLUGIN_NAMESPACE, entry_points, onnx_attributes
from build_engine.ptx import find_nvcc
from build_engine.trt_build import (
    NETWORK_FLAGS,
    EngineBuildError,
    EngineBuildOptions,
    build_engine_file,
    hardware_level_name,
    import_tensorrt,
    network_flag_names,
    parser_error_report,
    plugin_params_in,
    prepare_plugin_kernels,
    profile_shapes,
)
from engines.manifest import BatchProfile, TensorSpec
from engines.roi_align import RoIAlignParams

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
FRAMES = TensorSpec("frames", "uint8", (-1, 1080, 1920, 3))


def test_profile_spans_the_batch_range_at_the_fixed_frame_size() -> None:
    assert profile_shapes(FRAMES, BatchProfile(1, 4, 8)) == ((1, 1080, 1920, 3), (4, 1080, 1920, 3), (8, 1080, 1920, 3))


def test_profile_refuses_dynamic_frame_sizes() -> None:
    with pytest.raises(ValueError, match=r"dynamic dimensions \[1, 2\].*--source-size"):
        profile_shapes(TensorSpec("frames", "uint8", (-1, -1, -1, 3)), BatchProfile(1, 4, 8))


def test_profile_refuses_a_fixed_batch_unless_the_profile_is_that_batch() -> None:
    fixed = TensorSpec("frames", "uint8", (2, 120, 160, 3))
    assert profile_shapes(fixed, BatchProfile(2, 2, 2)) == ((2, 120, 160, 3),) * 3
    with pytest.raises(ValueError, match="fixed batch of 2, the profile asks for 1:4:8"):
        profile_shapes(fixed, BatchProfile(1, 4, 8))


@pytest.mark.parametrize(("available", "chosen"), [
    # TensorRT 10.0-10.8: strongly typed, no AOT preference flag
    ({"EXPLICIT_BATCH", "STRONGLY_TYPED"}, ("STRONGLY_TYPED",)),
    # TensorRT 10.9+: both
    ({"EXPLICIT_BATCH", "STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"},
     ("STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS")),
    # a TensorRT 11 without the (ignored) strongly-typed flag: AOT preference only
    ({"PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"}, ("PREFER_AOT_PYTHON_PLUGINS",)),
    (set(), ()),
])
def test_network_flags_are_chosen_by_presence(available: set[str], chosen: tuple[str, ...]) -> None:
    assert network_flag_names(available) == chosen
    assert "EXPLICIT_BATCH" not in NETWORK_FLAGS  # default since 10.0, gone in 11


def test_hardware_levels() -> None:
    assert hardware_level_name("none") is None
    assert hardware_level_name("ampere_plus") == "AMPERE_PLUS"
    assert hardware_level_name("same_compute_capability") == "SAME_COMPUTE_CAPABILITY"
    with pytest.raises(ValueError, match="hardware compatibility must be one of"):
        hardware_level_name("hopper_plus")  # type: ignore[arg-type]


def test_parser_errors_become_one_report() -> None:
    report = parser_error_report("m.onnx", ["UNSUPPORTED_NODE at node 'roi': no importer for MultilevelRoIAlign"])
    assert report.splitlines()[0] == "TensorRT could not parse m.onnx (1 error(s)):"
    assert "no importer for MultilevelRoIAlign" in report and "--onnx-only" in report
    assert "(the parser gave no details)" in parser_error_report("m.onnx", [])


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message of a machine without TensorRT")
def test_missing_tensorrt_is_reported_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match=r"TensorRT is not installed \(import tensorrt failed: .*--onnx-only"):
        import_tensorrt()
    opts = EngineBuildOptions(onnx_path=tmp_path / "m.onnx", engine_path=tmp_path / "m.plan", frames=FRAMES,
                              batch=BatchProfile(1, 4, 8), compute_capability="8.6", uses_plugin=False)
    with pytest.raises(ImportError, match="TensorRT is not installed"):
        build_engine_file(opts)
    assert not opts.engine_path.exists()


BOX, MASK = RoIAlignParams(output_size=7), RoIAlignParams(output_size=14)


def _attrs(params: RoIAlignParams) -> dict[str, Any]:
    return dict(onnx_attributes(params))


def _two_pooler_graph(path: Path) -> Path:
    """A graph holding the box and the mask pooler as plugin nodes (as the real export does)."""
    import onnx
    from onnx import TensorProto, helper

    feats = [helper.make_tensor_value_info(f"p{k}", TensorProto.FLOAT, [1, 8, 64 >> k, 64 >> k]) for k in range(4)]
    rois = helper.make_tensor_value_info("rois", TensorProto.FLOAT, [3, 5])
    nodes = [helper.make_node(PLUGIN_NAME, ["p0", "p1", "p2", "p3", "rois"], [out], name=out, domain=PLUGIN_NAMESPACE,
                              plugin_namespace=PLUGIN_NAMESPACE, plugin_version="1", **_attrs(params))
             for out, params in (("box", BOX), ("mask", MASK), ("box_again", BOX))]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("box", "mask", "box_again")]
    graph = helper.make_graph(nodes, "poolers", [*feats, rois], outs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid(PLUGIN_NAMESPACE, 1)]), str(path))
    return path


def _plugin_opts(tmp_path: Path, **kw: object) -> EngineBuildOptions:
    return EngineBuildOptions(onnx_path=_two_pooler_graph(tmp_path / "g.onnx"), engine_path=tmp_path / "g.plan",
                              frames=FRAMES, batch=BatchProfile(1, 4, 8), compute_capability="9.0", **kw)  # type: ignore[arg-type]


def test_plugin_specialisations_are_read_from_the_graph(tmp_path: Path) -> None:
    assert plugin_params_in(_two_pooler_graph(tmp_path / "g.onnx")) == [BOX, MASK]


@pytest.mark.skipif(find_nvcc() is None, reason="needs nvcc (CUDA toolkit) on PATH or in $CUDA_HOME/bin")
def test_kernels_are_compiled_before_tensorrt_for_the_engines_target(tmp_path: Path) -> None:
    kernels = prepare_plugin_kernels(_plugin_opts(tmp_path, hardware_compatibility="ampere_plus",
                                                  driver_cuda_version="99.0"))
    names = [*entry_points(BOX).values(), *entry_points(MASK).values()]
    assert sorted(kernels) == sorted(names)
    assert all(".target sm_80" in ptx for ptx in kernels.values()), "ampere_plus: compute_80 PTX on a 9.0 build GPU"
    assert ".target sm_90" in prepare_plugin_kernels(_plugin_opts(tmp_path, driver_cuda_version="99.0"))[names[0]]


def test_a_missing_compiler_stops_the_build_before_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import build_engine.ptx as ptx

    monkeypatch.setattr(ptx, "available_compilers", lambda backend="auto": [])
    opts = _plugin_opts(tmp_path, driver_cuda_version="12.4")
    with pytest.raises(EngineBuildError, match=r"RoIAlign plugin's kernels: .*no nvcc or NVRTC found"):
        build_engine_file(opts)
    assert not opts.engine_path.exists()


def test_a_compiler_newer_than_the_driver_stops_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import build_engine.ptx as ptx

    monkeypatch.setattr(ptx, "available_compilers",
                        lambda backend="auto": [ptx.Compiler("nvcc", (13, 0), "/usr/local/cuda-13.0/bin/nvcc")])
    with pytest.raises(EngineBuildError, match=r"load under CUDA 12\.4 .*every compiler found writes a newer PTX ISA"):
        build_engine_file(_plugin_opts(tmp_path, driver_cuda_version="12.4"))
