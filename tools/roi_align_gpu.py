"""GPU checks of the fused RoIAlign kernel, used by ``tools/trt_verify.py``.

* :func:`kernel_parity`: the PTX ``build_engine.ptx`` produces, launched with cupy exactly as
  the TensorRT plugin launches it (specialised entry names, ``GRID_BLOCKS`` x ``BLOCK_SIZE``,
  the int32 scalars), against ``engines.roi_align.multilevel_roi_align`` on the CPU. Needs
  torch with CUDA, cupy and a PTX compiler; no TensorRT.
* :func:`plugin_network_parity`: a TensorRT network of plugin nodes only, holding the 7x7
  box pooler and the 14x14 mask pooler together (one engine, two specialisations), built,
  run with torch buffers and compared with the reference op. Needs TensorRT >= 10.9.
* :func:`kernel_timing`: the kernel vs torchvision's ``MultiScaleRoIAlign`` (CUDA events).
"""

from __future__ import annotations

import functools
import statistics
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from build_engine.plugin import BLOCK_SIZE, GRID_BLOCKS, kernel_name, kernel_scalars
from build_engine.plugin_spec import PLUGIN_NAME, PLUGIN_NAMESPACE, onnx_attributes
from build_engine.ptx import Compiler, compile_ptx
from engines.roi_align import RoIAlignParams, multilevel_roi_align

Pool = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]

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
FP32_ATOL = 1e-4
"""GPU vs CPU reference, fp32: the GPU build contracts to FMA and has its own log2f."""
FP16_REL = 1e-2


def fpn_shapes(batch: int, channels: int, image: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """P2..P5 shapes of a padded ``image`` batch (padded to a multiple of 32 like torchvision)."""
    h, w = (-(-image[0] // 32) * 32, -(-image[1] // 32) * 32)
    return [(batch, channels, h // 2**k, w // 2**k) for k in range(2, 6)]


def random_rois(gen: torch.Generator, r: int, batch: int, image: tuple[int, int]) -> torch.Tensor:
    """``[r, 5]`` float32 boxes of log-uniform scale 2..900 px, some overhanging the image, plus edge cases."""
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
    """The kernel launched with cupy the way the TensorRT plugin launches it."""
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
    """Worst error of ``got`` against the CPU reference; fp32 absolute, fp16 relative."""
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


def kernel_parity(arch: tuple[int, int], compiler: Compiler, rois: int = 500, channels: int = 16,
                  image: tuple[int, int] = (800, 1344)) -> list[dict[str, Any]]:
    """Every parameter set of :data:`PARAM_SETS`, fp32 and fp16, PTX for ``compute_<arch>``."""
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(s, generator=gen) for s in fpn_shapes(2, channels, image)]
    boxes = random_rois(gen, rois, 2, image)
    rows = []
    for label, params in PARAM_SETS.items():
        pool = cupy_pool(params, arch, compiler)
        for dtype in (torch.float32, torch.float16):
            typed = [f.to(dtype) for f in feats]
            got = pool([f.cuda() for f in typed], boxes.cuda())
            rows.append({"params": label, "arch": f"compute_{arch[0]}{arch[1]}",
                         **compare_to_reference(got, typed, boxes, params)})
    return rows


def _plugin_graph(dtype: int, shapes: Sequence[tuple[int, ...]], num_rois: int) -> bytes:
    """ONNX bytes: four feature maps and rois in, the box and the mask pooler out (plugin nodes only)."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(f"p{k}", dtype, list(s)) for k, s in enumerate(shapes)]
    inputs.append(helper.make_tensor_value_info("rois", TensorProto.FLOAT, [num_rois, 5]))
    nodes, outputs = [], []
    for name, params in (("box", BOX_POOLER), ("mask", MASK_POOLER)):
        attrs: dict[str, Any] = dict(onnx_attributes(params))
        nodes.append(helper.make_node(PLUGIN_NAME, ["p0", "p1", "p2", "p3", "rois"], [name], name=name,
                                      domain=PLUGIN_NAMESPACE, plugin_namespace=PLUGIN_NAMESPACE,
                                      plugin_version="1", **attrs))
        s = params.output_size
        outputs.append(helper.make_tensor_value_info(name, dtype, [num_rois, shapes[0][1], s, s]))
    graph = helper.make_graph(nodes, "two_poolers", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(PLUGIN_NAMESPACE, 1)])
    return bytes(model.SerializeToString())


def plugin_network_parity(hardware_compatibility: str, max_cuda: tuple[int, int] | None) -> list[dict[str, Any]]:
    """Build and run the two-pooler plugin network (fp32 and fp16) at ``hardware_compatibility``.

    One process registers one target, so call this once per process (``tools/trt_verify.py``
    runs it in a child per level).
    """
    import tensorrt as trt
    from onnx import TensorProto

    from build_engine.plugin import register_plugin
    from build_engine.trt_build import create_network, hardware_level_name

    cc = torch.cuda.get_device_capability()
    target = register_plugin(cc, hardware_compatibility=hardware_compatibility, max_cuda=max_cuda)
    logger = trt.Logger(trt.Logger.WARNING)
    gen = torch.Generator().manual_seed(3)
    shapes = fpn_shapes(2, 32, (320, 480))
    feats32 = [torch.randn(s, generator=gen) for s in shapes]
    rois = random_rois(gen, 200, 2, (320, 480))
    rows = []
    for dtype, onnx_dtype in ((torch.float32, TensorProto.FLOAT), (torch.float16, TensorProto.FLOAT16)):
        builder = trt.Builder(logger)
        network = create_network(trt, builder)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(_plugin_graph(onnx_dtype, shapes, int(rois.shape[0]))):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError(f"TensorRT could not parse the two-pooler graph: {errors}")
        config = builder.create_builder_config()
        level = hardware_level_name(hardware_compatibility)  # type: ignore[arg-type]
        if level is not None:
            config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError("TensorRT could not build the two-pooler network (see its log)")
        engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(memoryview(serialized)))
        context = engine.create_execution_context()
        feats = [f.to(dtype) for f in feats32]
        tensors = {f"p{k}": f.cuda().contiguous() for k, f in enumerate(feats)}
        tensors["rois"] = rois.cuda().contiguous()
        for name, params in (("box", BOX_POOLER), ("mask", MASK_POOLER)):
            s = params.output_size
            tensors[name] = torch.empty((rois.shape[0], shapes[0][1], s, s), dtype=dtype, device="cuda")
        for name, t in tensors.items():
            context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            ok = context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        if not ok:
            raise RuntimeError("execute_async_v3 of the two-pooler engine returned False")
        for name, params in (("box", BOX_POOLER), ("mask", MASK_POOLER)):
            rows.append({"pooler": name, "level": hardware_compatibility,
                         "ptx": f"compute_{target.arch[0]}{target.arch[1]}", "compiler": target.compiler.describe(),
                         **compare_to_reference(tensors[name], feats, rois, params)})
        del context, engine
    return rows


def _time_cuda(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
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
                  image: tuple[int, int] = (800, 1344), repeats: int = 50) -> list[dict[str, Any]]:
    """Median ms of the fused kernel and of torchvision's MultiScaleRoIAlign (box pooler)."""
    from torchvision.ops import MultiScaleRoIAlign

    pool = cupy_pool(BOX_POOLER, arch, compiler)
    gen = torch.Generator().manual_seed(1)
    boxes = random_rois(gen, rois, batch, image)[:rois]
    boxes = boxes[boxes[:, 0].argsort(stable=True)].cuda()
    per_image = [boxes[boxes[:, 0] == b, 1:] for b in range(batch)]
    names = ["p2", "p3", "p4", "p5"]
    pooler = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
    feats32 = [torch.randn(s, generator=gen).cuda() for s in fpn_shapes(batch, channels, image)]
    rows = []
    for dtype in (torch.float32, torch.float16):
        feats = [f.to(dtype) for f in feats32]
        fmap = dict(zip(names, feats, strict=True))
        typed = [b.to(dtype) for b in per_image]
        ours = _time_cuda(functools.partial(pool, feats, boxes), 10, repeats)
        tv = _time_cuda(functools.partial(pooler, fmap, typed, [image] * batch), 10, repeats)
        rows.append({"dtype": str(dtype).removeprefix("torch."), "fused_ms": ours, "torchvision_ms": tv,
                     "speedup": tv / ours})
    return rows
