"""PTX compilation of the RoIAlign kernel (nvcc here; NVRTC when cuda-python is installed): target
architecture per hardware-compatibility level, compiler choice against the driver's CUDA version,
entry names unique per specialisation."""

from __future__ import annotations

import re

import pytest

from build_engine.plugin_spec import (
    KERNEL_SCALAR_ARGS,
    NUM_LEVELS,
    entry_points,
    specialisation_tag,
)
from build_engine.ptx import (
    AMPERE_PLUS_ARCH,
    Compiler,
    choose_compiler,
    compile_ptx,
    cuda_limit,
    find_compiler,
    find_nvcc,
    nvrtc_available,
    parse_compute_capability,
    parse_cuda_version,
    ptx_arch,
    ptx_entries,
    ptx_isa_version,
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

    assert set(ptx_entries(ptx)) == set(entry_points(RoIAlignParams()).values())
    assert re.search(rf"^\.target\s+sm_{cc[0]}{cc[1]}\b", ptx, re.MULTILINE)


@needs_nvcc
def test_entry_arguments_are_inputs_then_int32_scalars_then_output() -> None:
    ptx = compile_ptx(RoIAlignParams(), (8, 6), backend="nvcc")

    expected = ["u64"] * (NUM_LEVELS + 1) + ["u32"] * len(KERNEL_SCALAR_ARGS) + ["u64"]
    for entry in entry_points(RoIAlignParams()).values():
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

    assert set(ptx_entries(ptx)) == set(entry_points(RoIAlignParams(mode="max")).values())


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


# ----------------------------------------------------------------------------- target architecture
@pytest.mark.parametrize(("gpu", "level", "arch"), [
    ("9.0", "none", (9, 0)),
    ("8.6", "same_compute_capability", (8, 6)),
    ("9.0", "ampere_plus", (8, 0)),   # an H100-built engine must JIT on sm_80/86/89 too
    ("8.9", "ampere_plus", (8, 0)),
    ("12.0", "ampere_plus", (8, 0)),
    ("8.0", "ampere_plus", (8, 0)),
])
def test_ptx_target_follows_the_hardware_compatibility_level(gpu: str, level: str, arch: tuple[int, int]) -> None:
    assert ptx_arch(gpu, level) == arch
    assert AMPERE_PLUS_ARCH == (8, 0)


def test_ptx_target_refuses_ampere_plus_below_ampere_and_unknown_levels() -> None:
    with pytest.raises(ValueError, match=r"ampere_plus engines need a build GPU of compute capability >= 8.0, got 7.5"):
        ptx_arch("7.5", "ampere_plus")
    with pytest.raises(ValueError, match=r"hardware compatibility must be one of .*got 'hopper_plus'"):
        ptx_arch("9.0", "hopper_plus")


@needs_nvcc
def test_ampere_plus_ptx_is_compute_80_whatever_the_build_gpu() -> None:
    ptx = compile_ptx(RoIAlignParams(), ptx_arch((9, 0), "ampere_plus"), backend="nvcc")
    assert re.search(r"^\.target\s+sm_80\b", ptx, re.MULTILINE)


# ----------------------------------------------------------------------------- compiler vs driver
NVCC_13 = Compiler("nvcc", (13, 0), "/opt/cuda-13.0/bin/nvcc")
NVRTC_12_4 = Compiler("nvrtc", (12, 4))


def test_compiler_must_not_be_newer_than_the_driver() -> None:
    assert choose_compiler([NVCC_13, NVRTC_12_4], max_cuda=None) == NVCC_13
    assert choose_compiler([NVCC_13, NVRTC_12_4], max_cuda=(13, 1)) == NVCC_13
    assert choose_compiler([NVCC_13, NVRTC_12_4], max_cuda=(12, 8)) == NVRTC_12_4  # skips the too-new nvcc
    with pytest.raises(RuntimeError, match=r"load under CUDA 12\.2 .*nvcc 13\.0 \(/opt/cuda-13\.0/bin/nvcc\), nvrtc 12\.4.*"
                                           r"Install a CUDA toolkit <= 12\.2"):
        choose_compiler([NVCC_13, NVRTC_12_4], max_cuda=(12, 2))


def test_the_limit_is_the_driver_capped_at_tensorrts_cuda_major() -> None:
    assert cuda_limit("13.0", 12) == (12, 99), "CUDA 12 TensorRT: no CUDA 13 PTX even on a CUDA 13 driver"
    assert cuda_limit("12.4", 13) == (12, 4) and cuda_limit("12.4", None) == (12, 4)
    assert cuda_limit(None, 13) == (13, 99) and cuda_limit(None, None) is None
    assert choose_compiler([NVCC_13, NVRTC_12_4], max_cuda=cuda_limit("13.0", 12)) == NVRTC_12_4
    with pytest.raises(RuntimeError, match=r"load under CUDA 12\.x "):
        choose_compiler([NVCC_13], max_cuda=cuda_limit("13.0", 12))


def test_missing_compiler_is_a_clear_error_before_any_build(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match=r"no nvcc or NVRTC found\. Install the CUDA toolkit"):
        choose_compiler([], max_cuda=(12, 4))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    with pytest.raises(RuntimeError, match="no nvcc found"):
        find_compiler("nvcc")


@needs_nvcc
def test_nvcc_found_here_reports_its_cuda_version_and_ptx_isa() -> None:
    compiler = find_compiler("nvcc")
    ptx = compile_ptx(RoIAlignParams(), (8, 0), compiler=compiler)
    isa = ptx_isa_version(ptx)
    assert compiler.kind == "nvcc" and compiler.cuda_version >= (11, 0)
    assert isa is not None and isa[0] == compiler.cuda_version[0] - 4, "ISA major = CUDA major - 4 (12 -> 8, 13 -> 9)"
    with pytest.raises(RuntimeError, match="newer PTX ISA"):
        find_compiler("nvcc", max_cuda=(compiler.cuda_version[0] - 1, 9))


def test_cuda_versions_parse() -> None:
    assert parse_cuda_version("12.4") == (12, 4) and parse_cuda_version("13.0.1") == (13, 0)
    assert parse_cuda_version(None) is None and parse_cuda_version((12, 8)) == (12, 8)
    with pytest.raises(ValueError, match=r"CUDA version must look like '12\.4', got 'twelve'"):
        parse_cuda_version("twelve")


# ----------------------------------------------------------------------------- entry names
def test_entry_names_are_unique_per_specialisation() -> None:
    box, mask = RoIAlignParams(output_size=7), RoIAlignParams(output_size=14)
    variants = [box, mask, RoIAlignParams(sampling_ratio=0), RoIAlignParams(aligned=True), RoIAlignParams(mode="max"),
                RoIAlignParams(canonical_level=3), RoIAlignParams(canonical_scale=112.0),
                RoIAlignParams(min_level=1, max_level=4)]
    names = [name for p in variants for name in entry_points(p).values()]
    assert len(set(names)) == len(names) == 2 * len(variants)
    assert entry_points(box)["float32"].startswith("multilevel_roi_align_f32_s7_sr2_legacy_avg_")
    assert entry_points(mask)["float16"].startswith("multilevel_roi_align_f16_s14_sr2_legacy_avg_")
    assert specialisation_tag(box) == specialisation_tag(RoIAlignParams()), "a pure function of the parameters"


@needs_nvcc
def test_box_and_mask_pooler_ptx_define_disjoint_entries() -> None:
    box = compile_ptx(RoIAlignParams(output_size=7), (8, 6), backend="nvcc")
    mask = compile_ptx(RoIAlignParams(output_size=14), (8, 6), backend="nvcc")
    assert not set(ptx_entries(box)) & set(ptx_entries(mask))
