"""ONNX export of the static-shape model: ``uint8`` frames in, padded detections out.

::

    info = export_onnx(model, Path("model.onnx"), source_hw=(720, 1280), roi_align="plugin", precision="fp16")

The graph is :meth:`MaskRCNN.forward_static` traced by the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``) on a copy of the model with batch norms folded,
with :class:`build_engine.onnx_ops.GraphOps` in place of the eager NMS and RoIAlign. The
TorchScript exporter is used because it needs no extra package and writes custom-domain
nodes from ``autograd.Function.symbolic``; the dynamo exporter would need ``onnxscript`` and
custom-op translation tables for the same three nodes.

Input ``frames`` ``uint8[B, H, W, 3]`` (batch dynamic), outputs as in :mod:`engines.static_io`.
Two input modes:

* ``source_hw`` (camera resolution): the graph normalizes, resizes to
  :func:`engines.model.preprocess.resized_size` (bilinear, ``align_corners=False``) and pads
  to the size divisor, as the PyTorch model does; boxes come back in source pixels.
* ``input_hw`` (frames already at the network input size): normalize and pad only (the
  copy's ``min_size``/``max_size`` are set to the frame's short/long side, so the resize
  scale is exactly 1); boxes in those frames' pixels.

``precision="fp16"``: backbone, RPN head, box head and mask head run in float16; the
preprocessing, box decoding, NMS inputs, score softmax, RoIAlign accumulation (float32 in
the plugin, float32 ``RoiAlign`` in the portable graph) and the mask sigmoid stay float32.
The outputs are float32 in both precisions.

Metadata (:class:`engines.static_io.GraphInfo`) is written to the file's ``metadata_props``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from build_engine.manifest import onnx_io_and_plugins, sha256_file
from build_engine.onnx_ops import GraphOps, RoIAlignKind
from build_engine.plugin_spec import PLUGIN_ID, PLUGIN_NAMESPACE, PLUGIN_VERSION
from engines.build_command import Precision
from engines.classes import default_class_names
from engines.manifest import TensorSpec
from engines.model.maskrcnn import MaskRCNN
from engines.model.preprocess import padded_size, resized_size
from engines.static_io import BATCH_DIM, INPUT_NAME, OUTPUT_NAMES, GraphInfo, output_shapes

MIN_OPSET = 17
TRACE_BATCH = 2
"""Traced with two frames so that no batch-size-1 shortcut is baked into the graph."""


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export_onnx` wrote (shapes read back from the file; ``-1`` = the batch dimension)."""

    path: Path
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    opset: int
    roi_align: str
    plugin: tuple[str, str] | None
    """``(namespace::name, version)`` of the RoIAlign plugin node, None for the portable graph."""
    precision: str
    input_mode: str
    frame_size: tuple[int, int]
    network_size: tuple[int, int]
    """``(h, w)`` after the resize, before padding."""
    padded_size: tuple[int, int]
    sha256: str

    @property
    def input_name(self) -> str:
        return self.input.name

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)


class _Float16Stage(nn.Module):
    """Runs ``module`` in float16: inputs cast to float16, outputs to float32 if ``float_outputs``."""

    def __init__(self, module: nn.Module, float_outputs: bool) -> None:
        super().__init__()
        self.module = module.half()
        self.float_outputs = float_outputs

    def forward(self, x: Any) -> Any:
        y = self.module(_cast(x, torch.float16))
        return _cast(y, torch.float32) if self.float_outputs else y


def _cast(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x if x.dtype == dtype else x.to(dtype)
    if isinstance(x, list | tuple):
        return type(x)(_cast(v, dtype) for v in x)
    return x


class StaticGraph(nn.Module):
    """The exported function: ``frames`` → ``(counts, boxes, scores, labels, mask_probs)``."""

    def __init__(self, model: MaskRCNN, ops: GraphOps) -> None:
        super().__init__()
        self.model = model
        self.ops = ops

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.forward_static(frames, self.ops)
        return out.counts.to(torch.int32), out.boxes, out.scores, out.labels.to(torch.int32), out.mask_probs


def graph_model(model: MaskRCNN, frame_hw: tuple[int, int], input_mode: str, precision: Precision) -> MaskRCNN:
    """A fused CPU copy of ``model`` set up for the input mode and precision (``model`` is untouched)."""
    m = copy.deepcopy(model).cpu().float().eval()
    m.fuse_norms()
    if input_mode == "input":
        m.cfg.min_size, m.cfg.max_size = min(frame_hw), max(frame_hw)
    if precision == "fp16":
        m.backbone = _Float16Stage(m.backbone, float_outputs=False)  # type: ignore[assignment]
        m.rpn.head = _Float16Stage(m.rpn.head, float_outputs=True)  # type: ignore[assignment]
        heads = m.roi_heads
        heads.box_head = _Float16Stage(heads.box_head, float_outputs=False)
        heads.box_predictor = _Float16Stage(heads.box_predictor, float_outputs=True)  # type: ignore[assignment]
        heads.mask_head = _Float16Stage(heads.mask_head, float_outputs=False)  # type: ignore[assignment]
        heads.mask_predictor = _Float16Stage(heads.mask_predictor, float_outputs=True)  # type: ignore[assignment]
    return m


def _frame_size(source_hw: tuple[int, int] | None, input_hw: tuple[int, int] | None) -> tuple[tuple[int, int], str]:
    if (source_hw is None) == (input_hw is None):
        raise ValueError("give exactly one of source_hw (camera resolution, the graph resizes) and input_hw "
                         f"(frames already at the network input size), got source_hw={source_hw}, input_hw={input_hw}")
    hw, mode = (source_hw, "source") if source_hw is not None else (input_hw, "input")
    assert hw is not None
    h, w = (int(v) for v in hw)
    if h < 32 or w < 32:
        raise ValueError(f"frame size must be at least 32x32 pixels, got {h}x{w}")
    return (h, w), mode


def export_onnx(
    model: MaskRCNN,
    out: Path,
    source_hw: tuple[int, int] | None = None,
    input_hw: tuple[int, int] | None = None,
    roi_align: RoIAlignKind = "onnx",
    precision: Precision = "fp32",
    opset: int = 17,
    *,
    class_names: Sequence[str] | None = None,
    name: str | None = None,
) -> ExportInfo:
    """Write the static graph of ``model`` to ``out`` (see the module docstring).

    Args:
        model: the model (not modified; exported from a fused CPU copy).
        out: the ``.onnx`` file to write (parent directories are created).
        source_hw / input_hw: exactly one: ``(H, W)`` of the frames the graph takes.
        roi_align: ``"onnx"`` (standard operators; ONNX Runtime) or ``"plugin"`` (TensorRT).
        precision: ``"fp32"`` or ``"fp16"``.
        opset: ONNX opset, ``>= 17``.
        class_names: stored in the metadata (default: COCO names or ``class_i``).
        name: model name stored in the metadata (default: the file stem).
    """
    frame_hw, mode = _frame_size(source_hw, input_hw)
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (RoiAlign's coordinate modes, TensorRT), got {opset}")
    if roi_align not in ("plugin", "onnx"):
        raise ValueError(f"roi_align must be 'plugin' or 'onnx', got {roi_align!r}")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    cfg = model.cfg
    names = tuple(class_names) if class_names is not None else default_class_names(cfg.num_classes)
    if len(names) != cfg.num_classes:
        raise ValueError(f"{len(names)} class names for a {cfg.num_classes}-class model (background included)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    m = graph_model(model, frame_hw, mode, precision)
    net_hw = resized_size(frame_hw[0], frame_hw[1], float(m.cfg.min_size), float(m.cfg.max_size))
    graph = StaticGraph(m, GraphOps(roi_align)).eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (TRACE_BATCH, *frame_hw, 3), dtype=torch.uint8, generator=gen)
    dynamic = {n: {0: BATCH_DIM} for n in (INPUT_NAME, *OUTPUT_NAMES)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and legacy-exporter deprecation warnings
        torch.onnx.export(
            graph, (example,), str(out), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, do_constant_folding=True,
            custom_opsets={PLUGIN_NAMESPACE: 1} if roi_align == "plugin" else None,
        )

    info = GraphInfo(name=name or out.stem, class_names=names, frame_size=frame_hw, input_mode=mode,
                     network_size=net_hw, precision=precision, roi_align=roi_align, config=cfg.to_dict())
    _finish(out, info, output_shapes(cfg.detections_per_img, 2 * cfg.mask_roi_size))
    inputs, outputs, plugins = onnx_io_and_plugins(out)
    plugin = next(((p.id, p.version) for p in plugins if p.id == PLUGIN_ID), None)
    if roi_align == "plugin" and plugin != (PLUGIN_ID, PLUGIN_VERSION):
        raise RuntimeError(f"the exported graph lacks the {PLUGIN_ID} v{PLUGIN_VERSION} node (found {plugins})")
    return ExportInfo(
        path=out, input=inputs[0], outputs=outputs, opset=opset, roi_align=roi_align, plugin=plugin,
        precision=precision, input_mode=mode, frame_size=frame_hw, network_size=net_hw,
        padded_size=padded_size(net_hw[0], net_hw[1], cfg.size_divisible), sha256=sha256_file(out),
    )


def _finish(path: Path, info: GraphInfo, shapes: dict[str, tuple[int | str, ...]]) -> None:
    """Write the metadata, declare the static output shapes (the tracer leaves them symbolic),
    and validate the file with ``onnx.checker`` (full shape and type inference)."""
    import onnx

    from build_engine.onnx_check import check_onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in info.to_metadata().items():
        proto.metadata_props.add(key=key, value=value)
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        for dim, size in zip(dims, shapes[output.name], strict=True):
            if isinstance(size, int):
                dim.Clear()
                dim.dim_value = size
    proto.producer_name = "maskrcnn-streamer build_engine.export"
    proto.doc_string = f"Mask R-CNN static graph {info.name}: {info.input_mode} frames {info.frame_size}"
    check_onnx(proto)
    onnx.save(proto, str(path))
