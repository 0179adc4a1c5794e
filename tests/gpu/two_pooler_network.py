"""A TensorRT network of plugin nodes only: the 7x7 box pooler and the 14x14 mask pooler in one engine.

:func:`plugin_graph` writes the ONNX graph (four feature maps and rois in, both poolers out);
:func:`plugin_network_parity` registers the plugin, builds the graph at a hardware-compatibility
level, runs it with torch buffers and compares each pooler with the reference op. One process
registers one plugin target, so each level runs in a fresh process::

    python3 -m tests.gpu.two_pooler_network LEVEL OUT.json    # LEVEL: none or ampere_plus

writes ``{"rows": [...]}`` (one row per pooler and dtype, see
:func:`tools.roi_align_gpu.compare_to_reference`) and exits 0 when every row is within
tolerance, 1 otherwise. Needs a CUDA GPU, TensorRT >= 10.9, onnx and a PTX compiler.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from build_engine.plugin_spec import PLUGIN_NAME, PLUGIN_NAMESPACE, onnx_attributes
from tools.roi_align_gpu import (
    BOX_POOLER,
    MASK_POOLER,
    compare_to_reference,
    fpn_shapes,
    random_rois,
)

POOLERS = (("box", BOX_POOLER), ("mask", MASK_POOLER))


def plugin_graph(dtype: int, shapes: Sequence[tuple[int, ...]], num_rois: int) -> bytes:
    """ONNX bytes: inputs ``p0..p3`` (``shapes``, ONNX ``dtype``) and ``rois`` ``float32[num_rois, 5]``;
    outputs ``box`` ``[num_rois, C, 7, 7]`` and ``mask`` ``[num_rois, C, 14, 14]``, one plugin node each."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(f"p{k}", dtype, list(s)) for k, s in enumerate(shapes)]
    inputs.append(helper.make_tensor_value_info("rois", TensorProto.FLOAT, [num_rois, 5]))
    nodes, outputs = [], []
    for name, params in POOLERS:
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
    """Build and run the two-pooler network (fp32 and fp16) at ``hardware_compatibility``; one row per pooler and dtype."""
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
        if not parser.parse(plugin_graph(onnx_dtype, shapes, int(rois.shape[0]))):
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
        for name, params in POOLERS:
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
        for name, params in POOLERS:
            rows.append({"pooler": name, "level": hardware_compatibility,
                         "ptx": f"compute_{target.arch[0]}{target.arch[1]}", "compiler": target.compiler.describe(),
                         **compare_to_reference(tensors[name], feats, rois, params)})
        del context, engine
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``LEVEL OUT.json``: run :func:`plugin_network_parity` at LEVEL for this machine's driver and TensorRT."""
    level, out = argv if argv is not None else sys.argv[1:]
    from build_engine.ptx import cuda_limit, tensorrt_cuda_major
    from engines.machine import collect_runtime_environment

    limit = cuda_limit(collect_runtime_environment().cuda_version, tensorrt_cuda_major())
    rows = plugin_network_parity(level, limit)
    Path(out).write_text(json.dumps({"rows": rows}, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
