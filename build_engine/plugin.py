"""TensorRT registration of the fused multi-level RoIAlign as an AOT Python plugin.

``register_plugin()`` defines ``maskrcnn_streamer::MultilevelRoIAlign`` (version "1")
with ``tensorrt.plugin`` (TensorRT 10.9+ / 11.x): a shape/type function, the supported
type combination, and an ahead-of-time implementation that hands TensorRT the PTX of
``roi_align.cu`` (parameters baked in as macros), its entry point, the launch geometry
and the int32 scalars as shape expressions. The engine then holds the kernel and runs
without Python. Call it before parsing an ONNX file that holds the node (see
:mod:`build_engine.plugin_spec`) or before ``trtp.op.maskrcnn_streamer.MultilevelRoIAlign``::

    register_plugin()                      # compute capability of GPU 0, or pass "8.6"
    parser.parse_from_file("model.onnx")   # nodes of op type MultilevelRoIAlign bind to it

Importing this module never imports TensorRT; ``register_plugin`` raises ImportError
when TensorRT is missing or too old.
"""

# No ``from __future__ import annotations`` here: tensorrt.plugin inspects the decorated
# functions' annotations as objects (TensorDesc subclasses, numpy NDArray aliases).

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from build_engine.plugin_spec import (
    ATTRIBUTE_NAMES,
    ENTRY_POINTS,
    PLUGIN_ID,
    onnx_attributes,
    params_from_attributes,
)
from build_engine.ptx import compile_ptx, parse_compute_capability
from engines.roi_align import RoIAlignParams

BLOCK_SIZE = 256
"""Threads per block; one thread per output element, grid-stride loop."""

IO_TYPES = "FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32, FP32|FP16"
"""Features and output share FP32 or FP16; rois are always FP32 (AutoTuneCombination syntax)."""

_FLOAT_ATTRIBUTES = frozenset({"canonical_scale"})
Int32Attr = npt.NDArray[np.int32]
Float32Attr = npt.NDArray[np.float32]
"""ONNX INT/INTS fields arrive as int32 arrays, FLOAT as float32 (Python int/float would mean 64-bit)."""
_T = TypeVar("_T")
_registered_for: tuple[int, int] | None = None


def launch_grid(num_outputs: int, block_size: int = BLOCK_SIZE) -> int:
    """Blocks for ``num_outputs`` output elements: ``ceil(n / block)``, at least 1 (R = 0 is legal)."""
    if num_outputs < 0 or block_size < 1:
        raise ValueError(f"need num_outputs >= 0 and block_size >= 1, got {num_outputs}, {block_size}")
    return max(-(-num_outputs // block_size), 1)


def kernel_scalars(feature_shapes: Sequence[Sequence[_T]], rois_shape: Sequence[_T]) -> list[_T]:
    """The kernel's int32 scalars (``plugin_spec.KERNEL_SCALAR_ARGS`` order) from I/O shapes.

    Works on ints and on TensorRT shape expressions alike: ``R, C, N, H_0, W_0, ..., H_3, W_3``.
    """
    n, c = feature_shapes[0][0], feature_shapes[0][1]
    return [rois_shape[0], c, n, *(d for shape in feature_shapes for d in (shape[2], shape[3]))]


def plugin_attributes(params: RoIAlignParams) -> dict[str, npt.NDArray[Any]]:
    """Attributes as the typed 1-D arrays the plugin declares (for ``trtp.op...(**attrs)``)."""
    return {
        name: np.atleast_1d(np.asarray(value, dtype=np.float32 if name in _FLOAT_ATTRIBUTES else np.int32))
        for name, value in onnx_attributes(params).items()
    }


def kernel_name(dtype_name: str) -> str:
    """Entry point for the features' dtype (``"float32"`` / ``"float16"``)."""
    if dtype_name not in ENTRY_POINTS:
        raise ValueError(f"{PLUGIN_ID} runs on float32 or float16 features, got {dtype_name}")
    return ENTRY_POINTS[dtype_name]


def register_plugin(compute_capability: str | tuple[int, int] | None = None) -> None:
    """Register the plugin with TensorRT (idempotent).

    Args:
        compute_capability: GPU target of the PTX, e.g. ``"8.6"``; None = that of CUDA device 0.

    Raises:
        ImportError: TensorRT (with its libnvinfer libraries) is not installed, or lacks
            ``tensorrt.plugin.aot_impl`` (needs TensorRT >= 10.9).
        RuntimeError: already registered for another compute capability.
    """
    global _registered_for
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except (ImportError, OSError) as exc:
        raise ImportError(
            f"registering {PLUGIN_ID} needs TensorRT >= 10.9 with its libraries (libnvinfer): "
            f"pip install tensorrt (or tensorrt-cu12/-cu13) on a machine with an NVIDIA GPU; import failed: {exc}"
        ) from exc
    if not all(hasattr(trtp, n) for n in ("register", "aot_impl", "KernelLaunchParams", "SymInt32")):
        raise ImportError(
            f"tensorrt {getattr(trt, '__version__', '?')} has no AOT Python plugins (tensorrt.plugin.aot_impl): "
            "install TensorRT >= 10.9"
        )
    cc = parse_compute_capability(compute_capability) if compute_capability is not None else _detect_compute_capability()
    if _registered_for is not None:
        if _registered_for != cc:
            raise RuntimeError(
                f"{PLUGIN_ID} is already registered for compute capability {_registered_for}, asked for {cc}: "
                "build engines for one GPU per process"
            )
        return
    define_plugin(trt, trtp, cc)
    _registered_for = cc


def _detect_compute_capability() -> tuple[int, int]:
    from engines.machine import collect_runtime_environment

    found = collect_runtime_environment().compute_capability
    if found is None:
        raise RuntimeError(
            "no CUDA GPU found to target: pass register_plugin(compute_capability='8.6') "
            "(the engine's GPU) explicitly"
        )
    return parse_compute_capability(found)


def _params(attributes: Mapping[str, Any]) -> RoIAlignParams:
    return params_from_attributes({n: attributes[n] for n in ATTRIBUTE_NAMES})


def define_plugin(trt: Any, trtp: Any, compute_capability: tuple[int, int]) -> None:
    """Apply the ``tensorrt.plugin`` decorators (``trt``/``trtp`` are the imported modules)."""
    dtype_names = {trt.float32: "float32", trt.float16: "float16"}

    @trtp.register(PLUGIN_ID)
    def multilevel_roi_align_desc(
        features0: trtp.TensorDesc, features1: trtp.TensorDesc, features2: trtp.TensorDesc,
        features3: trtp.TensorDesc, rois: trtp.TensorDesc,
        output_size: Int32Attr, sampling_ratio: Int32Attr, aligned: Int32Attr, canonical_scale: Float32Attr,
        canonical_level: Int32Attr, min_level: Int32Attr, max_level: Int32Attr, feature_strides: Int32Attr,
    ) -> trtp.TensorDesc:
        s = _params(locals()).output_size
        return trtp.from_shape_expr(
            (rois.shape_expr[0], features0.shape_expr[1], s, s), dtype=features0.dtype
        )

    @trtp.autotune(PLUGIN_ID)
    def multilevel_roi_align_autotune(
        features0: trtp.TensorDesc, features1: trtp.TensorDesc, features2: trtp.TensorDesc,
        features3: trtp.TensorDesc, rois: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc],
    ) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(IO_TYPES, "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def multilevel_roi_align_aot_impl(
        features0: trtp.TensorDesc, features1: trtp.TensorDesc, features2: trtp.TensorDesc,
        features3: trtp.TensorDesc, rois: trtp.TensorDesc,
        output_size: Int32Attr, sampling_ratio: Int32Attr, aligned: Int32Attr, canonical_scale: Float32Attr,
        canonical_level: Int32Attr, min_level: Int32Attr, max_level: Int32Attr, feature_strides: Int32Attr,
        outputs: tuple[trtp.TensorDesc], tactic: int,
    ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        params = _params(locals())
        if features0.dtype not in dtype_names:
            raise ValueError(f"{PLUGIN_ID} runs on float32 or float16 features, got {features0.dtype}")
        name = kernel_name(dtype_names[features0.dtype])
        ptx = compile_ptx(params, compute_capability)

        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.max(trtp.cdiv(outputs[0].shape_expr.numel(), BLOCK_SIZE), 1)
        launch.block_x = BLOCK_SIZE
        launch.shared_mem = 0
        feats = (features0, features1, features2, features3)
        scalars = kernel_scalars([f.shape_expr for f in feats], rois.shape_expr)
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in scalars])
        return name, ptx, launch, extra
