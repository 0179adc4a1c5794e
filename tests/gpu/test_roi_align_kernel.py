"""The fused RoIAlign kernel on the GPU, launched with cupy as the TensorRT plugin launches it, against
the CPU reference op: every parameter set, fp32 and fp16, PTX for this GPU and (GPU >= 8.0) for the
``ampere_plus`` target compute_80. No TensorRT needed."""

from __future__ import annotations

from functools import cache
from types import ModuleType

import pytest
import torch

from build_engine.ptx import Compiler, ptx_arch
from engines.roi_align import RoIAlignParams
from tools.roi_align_gpu import (
    PARAM_SETS,
    Pool,
    compare_to_reference,
    cupy_pool,
    fpn_shapes,
    random_rois,
)

pytestmark = pytest.mark.gpu

IMAGE = (800, 1344)
"""(H, W) of the padded batch: every FPN level gets boxes."""


@cache
def _pool(params: RoIAlignParams, arch: tuple[int, int], compiler: Compiler) -> Pool:
    return cupy_pool(params, arch, compiler)


@pytest.fixture(scope="module")
def inputs() -> tuple[list[torch.Tensor], torch.Tensor]:
    """Feature maps P2..P5 ``float32[2, 16, H_l, W_l]`` and 500 random rois plus the edge cases, on the CPU."""
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(s, generator=gen) for s in fpn_shapes(2, 16, IMAGE)]
    return feats, random_rois(gen, 500, 2, IMAGE)


@pytest.mark.parametrize("level", ["none", "ampere_plus"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("label", list(PARAM_SETS))
def test_kernel_equals_the_reference_op(cuda_capability: tuple[int, int], cupy: ModuleType, ptx_compiler: Compiler,
                                        inputs: tuple[list[torch.Tensor], torch.Tensor], label: str,
                                        dtype: torch.dtype, level: str) -> None:
    if level == "ampere_plus" and cuda_capability < (8, 0):
        pytest.skip(f"ampere_plus PTX (compute_80) needs a GPU >= 8.0, this one is {cuda_capability}")
    params = PARAM_SETS[label]
    feats, rois = inputs
    typed = [f.to(dtype) for f in feats]
    pool = _pool(params, ptx_arch(cuda_capability, level), ptx_compiler)
    row = compare_to_reference(pool([f.cuda() for f in typed], rois.cuda()), typed, rois, params)
    assert row["ok"], row
