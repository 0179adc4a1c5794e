"""Time the fused RoIAlign kernel against torchvision's ``MultiScaleRoIAlign`` on this GPU::

    python3 -m tests.gpu.measure_roi_align_speed [--rois 1000] [--channels 256] [--batch 8] [--json OUT]

The box pooler (7x7, legacy, sampling ratio 2) over P2..P5 of an 800x1344 batch, fp32 and fp16;
median milliseconds of ``--repeats`` CUDA-event timed calls after 10 warm-up calls. The kernel is
the PTX the build compiles for this GPU, launched with cupy as the TensorRT plugin launches it.
Needs a CUDA GPU, cupy, a PTX compiler and torchvision. A measurement, not a test: its parity is
``tests/gpu/test_roi_align_kernel.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from build_engine.ptx import Compiler, find_compiler
from engines.machine import collect_runtime_environment
from tests.gpu.roi_align_cuda import BOX_POOLER, cupy_pool, fpn_shapes, random_rois

IMAGE = (800, 1344)


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
    boxes = random_rois(gen, rois, batch, IMAGE)[:rois]
    boxes = boxes[boxes[:, 0].argsort(stable=True)].cuda()
    per_image = [boxes[boxes[:, 0] == b, 1:] for b in range(batch)]
    names = ["p2", "p3", "p4", "p5"]
    pooler = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
    feats32 = [torch.randn(s, generator=gen).cuda() for s in fpn_shapes(batch, channels, IMAGE)]
    rows = []
    for dtype in (torch.float32, torch.float16):
        feats = [f.to(dtype) for f in feats32]
        fmap = dict(zip(names, feats, strict=True))
        typed = [b.to(dtype) for b in per_image]
        ours = _time_cuda(functools.partial(pool, feats, boxes), 10, repeats)
        tv = _time_cuda(functools.partial(pooler, fmap, typed, [IMAGE] * batch), 10, repeats)
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
