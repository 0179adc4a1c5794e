"""The engine build's pure parts (profile, flags, levels, messages); the TensorRT part runs on the GPU box."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from build_engine.trt_build import (
    NETWORK_FLAGS,
    EngineBuildOptions,
    build_engine_file,
    hardware_level_name,
    import_tensorrt,
    network_flag_names,
    parser_error_report,
    profile_shapes,
)
from engines.manifest import BatchProfile, TensorSpec

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
                              batch=BatchProfile(1, 4, 8), compute_capability="8.6")
    with pytest.raises(ImportError, match="TensorRT is not installed"):
        build_engine_file(opts)
    assert not opts.engine_path.exists()


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT libraries (libnvinfer) not installed")
def test_real_engine_build_is_covered_by_the_cli_test_on_the_gpu_box() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    trt = import_tensorrt()
    members = set(trt.NetworkDefinitionCreationFlag.__members__)
    assert "PREFER_AOT_PYTHON_PLUGINS" in network_flag_names(members), "TensorRT >= 10.9 needed for AOT plugins"
