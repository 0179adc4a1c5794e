"""The fused RoIAlign kernel launched on a CUDA GPU: its comparison with the reference op, and its timing.

* :func:`cupy_pool`: the PTX ``build_engine.ptx`` produces, launched with cupy exactly as the
  TensorRT plugin launches it (specialised entry names, ``GRID_BLOCKS`` x ``BLOCK_SIZE``, the
  int32 scalars). Needs torch with CUDA, cupy and a PTX compiler; no TensorRT.
* :func:`compare_to_reference`: the worst error of a pooled output against
  ``engines.roi_align.multilevel_roi_align`` on the CPU, fp32 absolute, fp16 relative.
* :func:`fpn_shapes`, :func:`random_rois`: feature maps and boxes of a padded image batch.
* :func:`kernel_timing`: the kernel against torchvision's ``MultiScaleRoIAlign``; as a command::

    python3 -m tools.roi_align_gpu [--rois 1000] [--channels 256] [--batch 8] [--json OUT]

  times the box pooler (7x7, legacy, sampling ratio 2) over P2..P5 of an 800x1344 batch, fp32
  and fp16: median milliseconds of ``--repeats`` CUDA-event timed calls after 10 warm-up calls.
  Needs torchvision too. A measurement; the kernel's parity is a ``gpu`` test
  (tests/gpu/test_roi_align_kernel.py, ``python3 -m pytest -m gpu``).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from build_engine.plugin import BLOCK_SIZE, GRID_BLOCKS, kernel_name, kernel_scalars
from build_engine.ptx import Compiler, compile_ptx, find_compiler
from engines.machine import collect_runtime_environment
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


TIMING_IMAGE = (800, 1344)
"""(H, W) of the timed batch."""


def _time_cuda(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn()`` (CUDA events) after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_timing(arch: tuple[int, int], compiler: Compiler, rois: int = 1000, channels: int = 256, batch: int = 8,
                  repeats: int = 50) -> list[dict[str, Any]]:
    """One row per dtype: ``fused_ms``, ``torchvision_ms`` and ``speedup`` (torchvision / fused)."""
    from torchvision.ops import MultiScaleRoIAlign

    pool = cupy_pool(BOX_POOLER, arch, compiler)
    gen = torch.Generator().manual_seed(1)
    boxes = random_rois(gen, rois, batch, TIMING_IMAGE)[:rois]
    boxes = boxes[boxes[:, 0].argsort(stable=True)].cuda()
    per_image = [boxes[boxes[:, 0] == b, 1:] for b in range(batch)]
    names = ["p2", "p3", "p4", "p5"]
    pooler = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
    feats32 = [torch.randn(s, generator=gen).cuda() for s in fpn_shapes(batch, channels, TIMING_IMAGE)]
    rows = []
    for dtype in (torch.float32, torch.float16):
        feats = [f.to(dtype) for f in feats32]
        fmap = dict(zip(names, feats, strict=True))
        typed = [b.to(dtype) for b in per_image]
        ours = _time_cuda(functools.partial(pool, feats, boxes), 10, repeats)
        tv = _time_cuda(functools.partial(pooler, fmap, typed, [TIMING_IMAGE] * batch), 10, repeats)
        rows.append({"dtype": str(dtype).removeprefix("torch."), "fused_ms": ours, "torchvision_ms": tv,
                     "speedup": tv / ours})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rois", type=int, default=1000)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("torch sees no CUDA device; run this on a GPU machine")
    env = collect_runtime_environment()
    compiler = find_compiler(max_cuda=env.cuda_version)
    rows = kernel_timing(torch.cuda.get_device_capability(), compiler, args.rois, args.channels, args.batch,
                         args.repeats)
    print(f"{env.gpu_name} (cc {env.compute_capability}), {compiler.describe()}, {args.rois} RoIs, "
          f"{args.channels} channels, batch {args.batch}")
    for r in rows:
        print(f"{r['dtype']:>8}: fused {r['fused_ms']:.3f} ms, torchvision {r['torchvision_ms']:.3f} ms, "
              f"{r['speedup']:.1f}x")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
