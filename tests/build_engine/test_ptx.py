"""PTX compilation of the RoIAlign kernel (nvcc here; NVRTC when cuda-python is installed)."""

from __future__ import annotations

import re

import pytest

from build_engine.plugin_spec import ENTRY_POINTS, KERNEL_SCALAR_ARGS, NUM_LEVELS
from build_engine.ptx import (
    compile_ptx,
    find_nvcc,
    nvrtc_available,
    parse_compute_capability,
    ptx_entries,
)
from engines.roi_align import RoIAlignParams

needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="needs nvcc (CUDA toolkit) on PATH or in $CUDA_HOME/bin")
needs_nvrtc = pytest.mark.skipif(not nvrtc_available(), reason="needs cuda-python (NVRTC bindings)")


def _entry_params(ptx: str, entry: str) -> list[str]:
    """PTX parameter types (``u64``/``u32``...) of ``entry``, in order."""
    m = re.search(rf"\.entry\s+{entry}\s*\((.*?)\)", ptx, re.DOTALL)
    assert m is not None, f"entry {entry} not in PTX"
    return re.findall(r"\.param\s+\.(\w+)", m.group(1))


@needs_nvcc
@pytest.mark.parametrize("cc", [(7, 5), (9, 0)])
def test_nvcc_ptx_has_both_entry_points_for_the_target(cc: tuple[int, int]) -> None:
    ptx = compile_ptx(RoIAlignParams(), cc, backend="nvcc")

    assert set(ptx_entries(ptx)) == set(ENTRY_POINTS.values())
    assert re.search(rf"^\.target\s+sm_{cc[0]}{cc[1]}\b", ptx, re.MULTILINE)


@needs_nvcc
def test_entry_arguments_are_inputs_then_int32_scalars_then_output() -> None:
    ptx = compile_ptx(RoIAlignParams(), (8, 6), backend="nvcc")

    expected = ["u64"] * (NUM_LEVELS + 1) + ["u32"] * len(KERNEL_SCALAR_ARGS) + ["u64"]
    for entry in ENTRY_POINTS.values():
        assert _entry_params(ptx, entry) == expected


@needs_nvcc
def test_parameters_are_baked_into_the_ptx() -> None:
    legacy = compile_ptx(RoIAlignParams(), (8, 6), backend="nvcc")
    aligned = compile_ptx(RoIAlignParams(aligned=True, sampling_ratio=0, output_size=14), (8, 6), backend="nvcc")

    assert "0fBF000000" in aligned  # -0.5f: the half-pixel shift of aligned=True
    assert "0fBF000000" not in legacy


@needs_nvrtc
def test_nvrtc_ptx_has_both_entry_points() -> None:
    ptx = compile_ptx(RoIAlignParams(mode="max"), "8.9", backend="nvrtc")

    assert set(ptx_entries(ptx)) == set(ENTRY_POINTS.values())


def test_kernel_refuses_a_pyramid_that_is_not_four_levels() -> None:
    with pytest.raises(ValueError, match="exactly 4 levels"):
        compile_ptx(RoIAlignParams(min_level=2, max_level=6), (8, 6))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8.6", (8, 6)), ("86", (8, 6)), ("sm_90", (9, 0)), ("compute_75", (7, 5)), ("12.0", (12, 0)), ("120", (12, 0))],
)
def test_parse_compute_capability(text: str, expected: tuple[int, int]) -> None:
    assert parse_compute_capability(text) == expected


@pytest.mark.parametrize("text", ["", "8", "ampere", "4.0", "sm_8x"])
def test_parse_compute_capability_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="compute capability"):
        parse_compute_capability(text)
