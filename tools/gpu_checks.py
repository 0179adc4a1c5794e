"""GPU checks of the fused RoIAlign kernel: parity with the reference op, and speed.

Runs on a CUDA machine with torch, cupy and nvcc (no TensorRT or pycuda needed)::

    python tools/gpu_checks.py                      # parity (fp32, fp16) + timing table
    python tools/gpu_checks.py --skip-timing --cc 9.0

1. Compiles ``build_engine/roi_align.cu`` to PTX for the GPU (``build_engine.ptx``), loads
   it with ``cupy.RawModule`` and launches it exactly as the TensorRT plugin would
   (same entry points, block size, grid and int32 scalars).
2. Parity: random FPN features and RoIs on every level plus edge cases, for several
   parameter sets, against ``engines.roi_align.multilevel_roi_align`` run on the CPU;
   fp32 within ``--atol`` (default 1e-4: the GPU build contracts to FMA and has its own
   log2f), fp16 I/O within 1e-2 relative.
3. Timing (CUDA events, median): the kernel vs torchvision's ``MultiScaleRoIAlign`` on
   CUDA for ``--rois`` RoIs x ``--channels`` x 4 levels, batch ``--batch``, features of an
   ``--image`` batch (default 1000 x 256, batch 8, 800x1344). Prints markdown tables.

``--backend host`` runs the parity part on the CPU host build instead (no GPU), for
checking this script itself. Exit status: 0 ok, 1 parity failure, 2 missing requirement.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from build_engine.plugin import BLOCK_SIZE, kernel_name, kernel_scalars, launch_grid
from build_engine.ptx import compile_ptx
from engines.roi_align import RoIAlignParams, map_levels, multilevel_roi_align

Pool = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]

PARAM_SETS = {
    "torchvision (legacy, sr=2)": RoIAlignParams(),
    "aligned, adaptive": RoIAlignParams(aligned=True, sampling_ratio=0),
    "max, legacy": RoIAlignParams(mode="max"),
}
EDGE_ROIS = [
    [0, 10.0, 12.0, 10.4, 12.3], [1, 50.0, 60.0, 50.0, 60.0], [0, -300.0, -200.0, -100.0, -50.0],
    [1, -20.0, -10.0, 2000.0, 1500.0], [0, 0.0, 0.0, 224.0, 224.0], [1, 0.0, 0.0, 112.0, 112.0],
]


def fpn_shapes(batch: int, channels: int, image: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """P2..P5 shapes of a padded ``image`` batch (padded to a multiple of 32 like torchvision)."""
    h, w = (-(-image[0] // 32) * 32, -(-image[1] // 32) * 32)
    return [(batch, channels, h // 2**k, w // 2**k) for k in range(2, 6)]


def random_rois(gen: torch.Generator, r: int, batch: int, image: tuple[int, int]) -> torch.Tensor:
    """``[r, 5]`` float32 boxes of log-uniform scale 2..900 px, some overhanging the image."""
    scale = torch.exp(torch.empty(r).uniform_(np.log(2.0), np.log(900.0), generator=gen))
    aspect = torch.exp(torch.empty(r).uniform_(np.log(0.5), np.log(2.0), generator=gen))
    w, h = scale * aspect.sqrt(), scale / aspect.sqrt()
    x1 = torch.empty(r).uniform_(-40, image[1], generator=gen)
    y1 = torch.empty(r).uniform_(-40, image[0], generator=gen)
    b = torch.randint(0, batch, (r,), generator=gen).float()
    return torch.stack([b, x1, y1, x1 + w, y1 + h], dim=1)


def cupy_pool(params: RoIAlignParams, cc: str | None) -> Pool:
    """The kernel launched with cupy the way the TensorRT plugin launches it."""
    import cupy

    ptx = compile_ptx(params, cc if cc is not None else torch.cuda.get_device_capability())
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    module = cupy.RawModule(path=f.name)

    def pool(features: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        feats = [f.contiguous() for f in features]
        boxes = rois.to(device=feats[0].device, dtype=torch.float32).contiguous()
        s = params.output_size
        out = torch.empty((boxes.shape[0], feats[0].shape[1], s, s), dtype=feats[0].dtype, device=feats[0].device)
        dtype = "float16" if feats[0].dtype == torch.float16 else "float32"
        fn = module.get_function(kernel_name(dtype))
        scalars = [np.int32(v) for v in kernel_scalars([tuple(f.shape) for f in feats], tuple(boxes.shape))]
        arrays = [cupy.asarray(t) for t in (*feats, boxes)]
        fn((launch_grid(out.numel()),), (BLOCK_SIZE,), (*arrays, *scalars, cupy.asarray(out)))
        return out

    return pool


def host_pool(params: RoIAlignParams) -> Pool:
    """The same kernel source built for the CPU (``--backend host``)."""
    from build_engine.kernel_host import load_host_kernel

    kernel = load_host_kernel(params)
    return lambda features, rois: torch.from_numpy(kernel([f.numpy() for f in features], rois.numpy()))


def check_parity(pool: Pool, params: RoIAlignParams, device: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    shapes = fpn_shapes(2, args.parity_channels, args.image)
    feats = [torch.randn(s, generator=gen) for s in shapes]
    rois = torch.cat([random_rois(gen, args.parity_rois, 2, args.image), torch.tensor(EDGE_ROIS)])
    levels = map_levels(rois[:, 1:], params.min_level, params.max_level)
    rows = []
    for dtype, tol_name in ((torch.float32, "atol"), (torch.float16, "rel")):
        typed = [f.to(dtype) for f in feats]
        expected = multilevel_roi_align(typed, rois, params).float()
        got = pool([f.to(device) for f in typed], rois.to(device)).float().cpu()
        err = (got - expected).abs()
        if dtype == torch.float32:
            bad = err > args.atol
            worst = float(err.max()) if err.numel() else 0.0
        else:
            bad = err > 1e-2 * expected.abs().clamp(min=1.0)
            worst = float((err / expected.abs().clamp(min=1.0)).max()) if err.numel() else 0.0
        bad_rois = int(bad.flatten(1).any(dim=1).sum())
        rows.append({"dtype": str(dtype).removeprefix("torch."), "metric": tol_name, "worst": worst,
                     "bad_rois": bad_rois, "rois": rois.shape[0], "levels": sorted(set(levels.tolist())),
                     "ok": bad_rois == 0})
    return rows


def time_cuda(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn`` on the current stream (CUDA events)."""
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


def run_timing(args: argparse.Namespace) -> list[dict[str, Any]]:
    from torchvision.ops import MultiScaleRoIAlign

    params = RoIAlignParams()
    pool = cupy_pool(params, args.cc)
    gen = torch.Generator().manual_seed(1)
    shapes = fpn_shapes(args.batch, args.channels, args.image)
    rois = random_rois(gen, args.rois, args.batch, args.image)
    rois = rois[rois[:, 0].argsort(stable=True)].cuda()
    boxes = [rois[rois[:, 0] == b, 1:] for b in range(args.batch)]
    pooler = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], output_size=7, sampling_ratio=2)
    image_sizes = [args.image] * args.batch
    feats32 = [torch.randn(s, generator=gen).cuda() for s in shapes]
    tv32 = pooler(dict(zip(["p2", "p3", "p4", "p5"], feats32, strict=True)), boxes, image_sizes)
    rows = []
    for dtype in (torch.float32, torch.float16):
        feats = [f.to(dtype) for f in feats32]
        fmap = dict(zip(["p2", "p3", "p4", "p5"], feats, strict=True))
        typed_boxes = [b.to(dtype) for b in boxes]  # torchvision's roi_align wants boxes in the features' dtype
        ours = time_cuda(functools.partial(pool, feats, rois), args.warmup, args.repeats)
        tv = time_cuda(functools.partial(pooler, fmap, typed_boxes, image_sizes), args.warmup, args.repeats)
        ref = time_cuda(functools.partial(multilevel_roi_align, feats, rois, params), 2, max(args.repeats // 5, 3))
        diff = float((pool(feats, rois).float() - tv32).abs().max())
        name = str(dtype).removeprefix("torch.")
        rows += [
            {"op": "fused kernel (cupy launch)", "dtype": name, "ms": ours, "speedup_vs_tv": tv / ours,
             "max_diff_vs_tv_fp32": diff},
            {"op": "torchvision MultiScaleRoIAlign", "dtype": name, "ms": tv, "speedup_vs_tv": 1.0,
             "max_diff_vs_tv_fp32": float((pooler(fmap, typed_boxes, image_sizes).float() - tv32).abs().max())},
            {"op": "engines reference (torch)", "dtype": name, "ms": ref, "speedup_vs_tv": tv / ref,
             "max_diff_vs_tv_fp32": float((multilevel_roi_align(feats, rois, params).float() - tv32).abs().max())},
        ]
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["cupy", "host"], default="cupy")
    p.add_argument("--cc", help="compute capability to compile for, e.g. 9.0 (default: the GPU's)")
    p.add_argument("--atol", type=float, default=1e-4, help="fp32 parity tolerance (absolute)")
    p.add_argument("--parity-rois", type=int, default=500)
    p.add_argument("--parity-channels", type=int, default=16)
    p.add_argument("--rois", type=int, default=1000)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=lambda s: tuple(int(v) for v in s.split("x")), default=(800, 1344),
                   help="HxW of the padded input batch (default 800x1344)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--skip-timing", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.backend == "cupy":
        if not torch.cuda.is_available():
            print("gpu_checks: no CUDA device visible to torch (use --backend host for a CPU dry run)", file=sys.stderr)
            return 2
        try:
            import cupy  # noqa: F401
        except ImportError:
            print("gpu_checks: cupy is not installed (pip install cupy-cuda12x or cupy-cuda13x)", file=sys.stderr)
            return 2
        print(f"device: {torch.cuda.get_device_name()} (cc {'.'.join(map(str, torch.cuda.get_device_capability()))}), "
              f"torch {torch.__version__}, cuda {torch.version.cuda}\n")
    ok = True
    print("## Parity with engines.roi_align.multilevel_roi_align (CPU reference)\n")
    for label, params in PARAM_SETS.items():
        try:
            pool = cupy_pool(params, args.cc) if args.backend == "cupy" else host_pool(params)
        except RuntimeError as exc:
            print(f"gpu_checks: cannot build the kernel: {exc}", file=sys.stderr)
            return 2
        rows = check_parity(pool, params, "cuda" if args.backend == "cupy" else "cpu", args)
        print(f"### {label}\n\n{markdown(rows)}\n")
        ok &= all(r["ok"] for r in rows)
    if args.backend == "cupy" and not args.skip_timing:
        print(f"## Timing: {args.rois} RoIs x {args.channels} ch x 4 levels, batch {args.batch}, "
              f"image {args.image[0]}x{args.image[1]} (median of {args.repeats})\n")
        print(markdown(run_timing(args)) + "\n")
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
