"""TensorRT registration of the fused multi-level RoIAlign as an AOT Python plugin.

``register_plugin()`` defines ``maskrcnn_streamer::MultilevelRoIAlign`` (version "1")
with ``tensorrt.plugin`` (TensorRT 10.9+ / 11.x): a shape/type function, the supported
type combination, and an ahead-of-time implementation that hands TensorRT the PTX of
``roi_align.cu`` (parameters and a per-specialisation entry name baked in as macros), its
entry point, a fixed launch grid and the int32 scalars as shape expressions. The engine
then holds the kernel and runs without Python. Call it before parsing an ONNX file that
holds the node (see :mod:`build_engine.plugin_spec`)::

    register_plugin("8.6", hardware_compatibility="none", max_cuda="12.4")
    parser.parse_from_file("model.onnx")   # nodes of op type MultilevelRoIAlign bind to it

The PTX target (:func:`build_engine.ptx.ptx_arch`) and the compiler
(:func:`build_engine.ptx.find_compiler`, CUDA version <= the driver's) are settled here,
before TensorRT starts building, so a missing or too-new compiler is a clear error.

Safe form of the TensorRT callbacks (TensorRT 10.9-10.14 may hand a stale symbolic
expression builder across plugin nodes, fixed in 10.15 [unconfirmed]): nothing TensorRT
gives is kept across calls; the shape function builds its output from that call's input
expressions only; the AOT implementation does no arithmetic on shape expressions (the
kernel's grid-stride loop lets a fixed grid of :data:`GRID_BLOCKS` cover any output, and
the scalars are the input dimensions passed through unchanged).

Importing this module never imports TensorRT; ``register_plugin`` raises ImportError
when TensorRT is missing or too old.
"""

# No ``from __future__ import annotations`` here: tensorrt.plugin inspects the decorated
# functions' annotations as objects (TensorDesc subclasses, numpy NDArray aliases).

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from build_engine.plugin_spec import (
    ATTRIBUTE_NAMES,
    ENTRY_POINTS,
    PLUGIN_ID,
    entry_points,
    onnx_attributes,
    params_from_attributes,
)
from build_engine.ptx import (
    Backend,
    Compiler,
    compile_ptx,
    find_compiler,
    parse_compute_capability,
    ptx_arch,
)
from engines.roi_align import RoIAlignParams

BLOCK_SIZE = 256
"""Threads per block; one thread per output element, grid-stride loop."""
GRID_BLOCKS = 1024
"""Blocks per launch, whatever the output size: 262144 threads, about one full wave on the largest
GPUs; the kernel's grid-stride loop covers the rest. A constant keeps the AOT implementation free
of shape-expression arithmetic (see the module docstring)."""
STALE_BUILDER_VERSIONS = ((10, 9), (10, 15))
"""TensorRT versions ``[from, to)`` whose Python plugin layer may reuse a stale expression builder."""

IO_TYPES = "FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32, FP32|FP16"
"""Features and output share FP32 or FP16; rois are always FP32 (AutoTuneCombination syntax)."""

_FLOAT_ATTRIBUTES = frozenset({"canonical_scale"})
Int32Attr = npt.NDArray[np.int32]
Float32Attr = npt.NDArray[np.float32]
"""ONNX INT/INTS fields arrive as int32 arrays, FLOAT as float32 (Python int/float would mean 64-bit)."""
_T = TypeVar("_T")
_registered_for: "PluginTarget | None" = None


def tensorrt_version_tuple(version: str) -> tuple[int, int]:
    """``"10.13.3.9"`` → ``(10, 13)``; unparsable → ``(0, 0)``."""
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return 0, 0


def stale_builder_risk(version: str) -> bool:
    """Whether ``version`` lies where the stale expression builder is reported (the safe form applies)."""
    lo, hi = STALE_BUILDER_VERSIONS
    return lo <= tensorrt_version_tuple(version) < hi


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


def kernel_name(params: RoIAlignParams, dtype_name: str) -> str:
    """Entry point of the ``params`` specialisation for the features' dtype (``"float32"`` / ``"float16"``)."""
    if dtype_name not in ENTRY_POINTS:
        raise ValueError(f"{PLUGIN_ID} runs on float32 or float16 features, got {dtype_name}")
    return entry_points(params)[dtype_name]


@dataclass(frozen=True)
class PluginTarget:
    """What the registered plugin compiles for: PTX architecture and compiler (plain values)."""

    arch: tuple[int, int]
    compiler: Compiler


def register_plugin(
    compute_capability: str | tuple[int, int] | None = None,
    *,
    hardware_compatibility: str = "none",
    max_cuda: str | tuple[int, int] | None = None,
    backend: Backend = "auto",
) -> PluginTarget:
    """Register the plugin with TensorRT (idempotent for one target).

    Args:
        compute_capability: the build GPU, e.g. ``"8.6"``; None = that of CUDA device 0.
        hardware_compatibility: the engine's level; ``ampere_plus`` targets compute_80 PTX.
        max_cuda: the driver's CUDA version (e.g. ``"12.4"``): the compiler must not be newer.
        backend: ``"auto"``, ``"nvcc"`` or ``"nvrtc"``.

    Raises:
        RuntimeError: no usable compiler (checked first, before TensorRT), or already
            registered for another target.
        ImportError: TensorRT (with its libnvinfer libraries) is not installed, or lacks
            ``tensorrt.plugin.aot_impl`` (needs TensorRT >= 10.9).
    """
    global _registered_for
    cc = parse_compute_capability(compute_capability) if compute_capability is not None else _detect_compute_capability()
    target = PluginTarget(ptx_arch(cc, hardware_compatibility), find_compiler(backend, max_cuda))
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
    if _registered_for is not None:
        if _registered_for != target:
            raise RuntimeError(
                f"{PLUGIN_ID} is already registered for {_registered_for}, asked for {target}: "
                "build engines for one target per process"
            )
        return target
    if stale_builder_risk(getattr(trt, "__version__", "")):
        warnings.warn(
            f"TensorRT {trt.__version__} may reuse a stale shape-expression builder across plugin nodes (fixed in "
            "10.15, unconfirmed); the plugin uses the safe form, and the two-pooler gpu test (tests/gpu/test_plugin_network.py) "
            "settles it on this machine", stacklevel=2)
    define_plugin(trt, trtp, target)
    _registered_for = target
    return target


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


def define_plugin(trt: Any, trtp: Any, target: PluginTarget) -> None:
    """Apply the ``tensorrt.plugin`` decorators (``trt``/``trtp`` are the imported modules).

    Nothing TensorRT hands in is stored: each callback works from its own arguments only.
    """
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
        name = kernel_name(params, dtype_names[features0.dtype])
        ptx = compile_ptx(params, target.arch, compiler=target.compiler)

        launch = trtp.KernelLaunchParams()
        launch.grid_x = GRID_BLOCKS  # constant: no arithmetic on shape expressions here
        launch.block_x = BLOCK_SIZE
        launch.shared_mem = 0
        feats = (features0, features1, features2, features3)
        scalars = kernel_scalars([f.shape_expr for f in feats], rois.shape_expr)
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in scalars])
        return name, ptx, launch, extra
