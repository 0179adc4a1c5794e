"""The fused RoIAlign kernel launched on a CUDA GPU, and its comparison with the reference op.

* :func:`cupy_pool`: the PTX ``build_engine.ptx`` produces, launched with cupy exactly as the
  TensorRT plugin launches it (specialised entry names, ``GRID_BLOCKS`` x ``BLOCK_SIZE``, the
  int32 scalars). Needs torch with CUDA, cupy and a PTX compiler; no TensorRT.
* :func:`compare_to_reference`: the worst error of a pooled output against
  ``engines.roi_align.multilevel_roi_align`` on the CPU, fp32 absolute, fp16 relative.
* :func:`fpn_shapes`, :func:`random_rois`: feature maps and boxes of a padded image batch.

Used by the ``gpu`` tests (tests/gpu) and by ``measure_roi_align_speed``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from build_engine.plugin import BLOCK_SIZE, GRID_BLOCKS, kernel_name, kernel_scalars
from build_engine.ptx import Compiler, compile_ptx
from engines.roi_align import RoIAlignParams, multilevel_roi_align

Pool = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]
"""``(features P2..P5 [N, C, H_l, W_l], rois [R, 5]) -> pooled [R, C, S, S]``."""

BOX_POOLER = RoIAlignParams(output_size=7)
MASK_POOLER = RoIAlignParams(output_size=14)
PARAM_SETS = {
    "box 7x7 (legacy, sr=2)": BOX_POOLER,
    "mask 14x14 (legacy, sr=2)": MASK_POOLER,
    "aligned, adaptive": RoIAlignParams(aligned=True, sampling_ratio=0),
    "max, legacy": RoIAlignParams(mode="max"),
}
EDGE_ROIS = [
    [0, 10.0, 12.0, 10.4, 12.3], [1, 50.0, 60.0, 50.0, 60.0], [0, -300.0, -200.0, -100.0, -50.0],
    [1, -20.0, -10.0, 2000.0, 1500.0], [0, 0.0, 0.0, 224.0, 224.0], [1, 0.0, 0.0, 112.0, 112.0],
]
"""Boxes under a pixel, empty, wholly outside, far overhanging, exactly the image, half of it."""
FP32_ATOL = 1e-4
"""GPU vs CPU reference, fp32: the GPU build contracts to FMA and has its own log2f."""
FP16_REL = 1e-2
"""GPU fp16 vs the fp32 reference on fp16-rounded inputs: relative to ``max(|expected|, 1)``."""


def fpn_shapes(batch: int, channels: int, image: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """P2..P5 shapes ``(N, C, H_l, W_l)`` of a padded ``image`` ``(H, W)`` batch (padded to a multiple of 32)."""
    h, w = (-(-image[0] // 32) * 32, -(-image[1] // 32) * 32)
    return [(batch, channels, h // 2**k, w // 2**k) for k in range(2, 6)]


def random_rois(gen: torch.Generator, r: int, batch: int, image: tuple[int, int]) -> torch.Tensor:
    """``float32[r + 6, 5]`` rois ``(batch index, x1, y1, x2, y2)``: log-uniform scale 2..900 px,
    some overhanging the image, then :data:`EDGE_ROIS` (batch index clamped to ``batch - 1``)."""
    scale = torch.exp(torch.empty(r).uniform_(np.log(2.0), np.log(900.0), generator=gen))
    aspect = torch.exp(torch.empty(r).uniform_(np.log(0.5), np.log(2.0), generator=gen))
    w, h = scale * aspect.sqrt(), scale / aspect.sqrt()
    x1 = torch.empty(r).uniform_(-40, image[1], generator=gen)
    y1 = torch.empty(r).uniform_(-40, image[0], generator=gen)
    b = torch.randint(0, batch, (r,), generator=gen).float()
    edge = torch.tensor(EDGE_ROIS)
    edge[:, 0] = edge[:, 0].clamp(max=batch - 1)
    return torch.cat([torch.stack([b, x1, y1, x1 + w, y1 + h], dim=1), edge])


def cupy_pool(params: RoIAlignParams, arch: tuple[int, int], compiler: Compiler) -> Pool:
    """The kernel for ``params``, PTX for ``compute_<arch>``, launched with cupy as the plugin launches it."""
    import cupy

    ptx = compile_ptx(params, arch, compiler=compiler)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    module = cupy.RawModule(path=f.name)

    def pool(features: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        feats = [f.contiguous() for f in features]
        boxes = rois.to(device=feats[0].device, dtype=torch.float32).contiguous()
        s = params.output_size
        out = torch.empty((boxes.shape[0], feats[0].shape[1], s, s), dtype=feats[0].dtype, device=feats[0].device)
        fn = module.get_function(kernel_name(params, "float16" if feats[0].dtype == torch.float16 else "float32"))
        scalars = [np.int32(v) for v in kernel_scalars([tuple(f.shape) for f in feats], tuple(boxes.shape))]
        arrays = [cupy.asarray(t) for t in (*feats, boxes)]
        fn((GRID_BLOCKS,), (BLOCK_SIZE,), (*arrays, *scalars, cupy.asarray(out)))
        return out

    return pool


def compare_to_reference(got: torch.Tensor, feats: Sequence[torch.Tensor], rois: torch.Tensor,
                         params: RoIAlignParams) -> dict[str, Any]:
    """Worst error of ``got`` ``[R, C, S, S]`` against the CPU reference on the same inputs.

    fp32 inputs: absolute error <= :data:`FP32_ATOL`; fp16: error / max(|expected|, 1) <=
    :data:`FP16_REL`. Returns ``dtype``, ``metric``, ``worst``, ``bad_rois`` (rois with any
    element out of tolerance), ``rois`` and ``ok``.
    """
    expected = multilevel_roi_align([f.cpu() for f in feats], rois.cpu(), params).float()
    err = (got.float().cpu() - expected).abs()
    if feats[0].dtype == torch.float16:
        scaled = err / expected.abs().clamp(min=1.0)
        bad, worst, metric = scaled > FP16_REL, float(scaled.max()) if err.numel() else 0.0, f"rel <= {FP16_REL}"
    else:
        bad, worst, metric = err > FP32_ATOL, float(err.max()) if err.numel() else 0.0, f"abs <= {FP32_ATOL}"
    bad_rois = int(bad.flatten(1).any(dim=1).sum()) if bad.numel() else 0
    return {"dtype": str(feats[0].dtype).removeprefix("torch."), "metric": metric, "worst": worst,
            "bad_rois": bad_rois, "rois": int(rois.shape[0]), "ok": bad_rois == 0}
