"""Identity and parameters of the fused RoIAlign TensorRT plugin (no TensorRT import).

Shared by the ONNX exporter (node name, domain, attributes), the plugin registration
(:mod:`build_engine.plugin`), the PTX compiler (:mod:`build_engine.ptx`) and the host
build used by the tests (:mod:`build_engine.kernel_host`).

The ONNX node::

    node = onnx.helper.make_node(
        PLUGIN_NAME, [feat_p2, feat_p3, feat_p4, feat_p5, rois], [pooled],
        domain=PLUGIN_NAMESPACE, plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION, **onnx_attributes(params),
    )

Inputs: four feature maps ``[N, C, H_l, W_l]`` (levels ``min_level..min_level+3``, all
float32 or all float16) and ``rois [R, 5]`` float32 ``(batch_index, x1, y1, x2, y2)``
in input-image pixels. Output: ``[R, C, S, S]`` in the features' dtype.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engines.roi_align import RoIAlignParams

PLUGIN_NAMESPACE = "maskrcnn_streamer"
PLUGIN_NAME = "MultilevelRoIAlign"
PLUGIN_VERSION = "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"

NUM_LEVELS = 4
"""The kernel takes exactly four feature levels (torchvision's P2..P5 box pooler)."""

KERNEL_SOURCE = Path(__file__).with_name("roi_align.cu")
ENTRY_POINTS: Mapping[str, str] = {
    "float32": "multilevel_roi_align_f32",
    "float16": "multilevel_roi_align_f16",
}
"""Entry point name prefix per feature dtype (numpy dtype name); :func:`entry_points` adds the
specialisation tag. (Also the source's names when compiled without ``RA_ENTRY_*`` macros.)"""

KERNEL_SCALAR_ARGS = (
    "num_rois", "channels", "batch", "h0", "w0", "h1", "w1", "h2", "w2", "h3", "w3",
)
"""The int32 scalars between the input and output pointers of both entry points, in order."""

ATTRIBUTE_NAMES = (
    "output_size", "sampling_ratio", "aligned", "canonical_scale", "canonical_level",
    "min_level", "max_level", "feature_strides",
)
"""Plugin fields in registration order. ONNX INT → int32, FLOAT → float32, INTS → int32[]."""


def onnx_attributes(params: RoIAlignParams) -> dict[str, int | float | list[int]]:
    """The ONNX node attributes that fully determine the op for ``params``.

    Raises:
        ValueError: when the kernel cannot run ``params`` (see :func:`check_kernel_params`).
    """
    check_kernel_params(params)
    return {
        "output_size": params.output_size,
        "sampling_ratio": params.sampling_ratio,
        "aligned": int(params.aligned),
        "canonical_scale": float(np.float32(params.canonical_scale)),
        "canonical_level": params.canonical_level,
        "min_level": params.min_level,
        "max_level": params.max_level,
        "feature_strides": list(params.strides),
    }


def _scalar(name: str, value: Any) -> float:
    arr = np.asarray(value).reshape(-1)
    if arr.size != 1:
        raise ValueError(f"plugin attribute {name!r} must hold exactly one value, got {arr.size}: {arr.tolist()}")
    v = float(arr[0])
    if not math.isfinite(v):
        raise ValueError(f"plugin attribute {name!r} must be finite, got {v}")
    return v


def _integer(name: str, value: Any) -> int:
    v = _scalar(name, value)
    if v != int(v):
        raise ValueError(f"plugin attribute {name!r} must be an integer, got {v}")
    return int(v)


def params_from_attributes(attributes: Mapping[str, Any]) -> RoIAlignParams:
    """Validate plugin attributes (scalars or 1-element arrays, as TensorRT passes them).

    Raises:
        ValueError: naming the attribute, the rule and the value received.
    """
    missing = [n for n in ATTRIBUTE_NAMES if n not in attributes]
    unknown = sorted(set(attributes) - set(ATTRIBUTE_NAMES))
    if missing or unknown:
        raise ValueError(
            f"{PLUGIN_ID} needs exactly the attributes {list(ATTRIBUTE_NAMES)}; missing {missing}, "
            f"unknown {unknown}. Export the node with build_engine.plugin_spec.onnx_attributes(params)."
        )
    aligned = _integer("aligned", attributes["aligned"])
    if aligned not in (0, 1):
        raise ValueError(f"plugin attribute 'aligned' must be 0 or 1, got {aligned}")
    scale = _scalar("canonical_scale", attributes["canonical_scale"])
    if scale <= 0:
        raise ValueError(f"plugin attribute 'canonical_scale' must be > 0, got {scale}")
    params = RoIAlignParams(
        output_size=_integer("output_size", attributes["output_size"]),
        sampling_ratio=_integer("sampling_ratio", attributes["sampling_ratio"]),
        aligned=bool(aligned),
        canonical_scale=scale,
        canonical_level=_integer("canonical_level", attributes["canonical_level"]),
        min_level=_integer("min_level", attributes["min_level"]),
        max_level=_integer("max_level", attributes["max_level"]),
    )
    strides = [int(s) for s in np.asarray(attributes["feature_strides"]).reshape(-1)]
    if tuple(strides) != params.strides:
        raise ValueError(
            f"plugin attribute 'feature_strides' must be 2**k for k in min_level..max_level "
            f"({list(params.strides)}), got {strides}"
        )
    check_kernel_params(params)
    return params


def check_kernel_params(params: RoIAlignParams) -> None:
    """Raise ValueError unless the CUDA kernel can be compiled for ``params``."""
    n_levels = params.max_level - params.min_level + 1
    if n_levels != NUM_LEVELS:
        raise ValueError(
            f"the fused RoIAlign kernel pools from exactly {NUM_LEVELS} levels, got levels "
            f"{params.min_level}..{params.max_level} ({n_levels}); use the reference op "
            "engines.roi_align.multilevel_roi_align for other pyramids"
        )
    if params.min_level < 0 or params.max_level > 30:
        raise ValueError(f"levels must lie in 0..30 (stride 2**k fits int32), got {params.min_level}..{params.max_level}")
    if not (math.isfinite(params.canonical_scale) and params.canonical_scale > 0):
        raise ValueError(f"canonical_scale must be finite and > 0, got {params.canonical_scale}")
    if params.output_size > 64:
        raise ValueError(f"output_size must be <= 64 for this kernel, got {params.output_size}")


def _float_literal(value: float) -> str:
    """C float literal that parses to exactly ``float32(value)``."""
    return f"{float(np.float32(value))!r}f"


def specialisation_tag(params: RoIAlignParams) -> str:
    """Short name of one compiled specialisation: readable parameters plus 8 hex digits of a hash
    over every baked macro and the kernel source, e.g. ``s7_sr2_legacy_avg_1f0c3a9e``."""
    digest = hashlib.sha256(KERNEL_SOURCE.read_bytes())
    for key, value in sorted(_parameter_macros(params).items()):
        digest.update(f"{key}={value};".encode())
    ratio = f"sr{params.sampling_ratio}" if params.sampling_ratio > 0 else "adaptive"
    align = "aligned" if params.aligned else "legacy"
    return f"s{params.output_size}_{ratio}_{align}_{params.mode}_{digest.hexdigest()[:8]}"


def entry_points(params: RoIAlignParams) -> dict[str, str]:
    """The kernel's entry point per feature dtype for ``params``: unique per specialisation, so two
    plugin nodes (the 7×7 box pooler, the 14×14 mask pooler) never give TensorRT different PTX under
    one name."""
    tag = specialisation_tag(params)
    return {dtype: f"{prefix}_{tag}" for dtype, prefix in ENTRY_POINTS.items()}


def kernel_macros(params: RoIAlignParams) -> dict[str, str]:
    """``-D`` macros that bake ``params`` and the entry point names into ``roi_align.cu`` (name → value)."""
    names = entry_points(params)
    return {**_parameter_macros(params), "RA_ENTRY_F32": names["float32"], "RA_ENTRY_F16": names["float16"]}


def _parameter_macros(params: RoIAlignParams) -> dict[str, str]:
    check_kernel_params(params)
    return {
        "RA_OUTPUT_SIZE": str(params.output_size),
        "RA_SAMPLING_RATIO": str(params.sampling_ratio),
        "RA_ALIGNED": str(int(params.aligned)),
        "RA_CANONICAL_SCALE": _float_literal(params.canonical_scale),
        "RA_CANONICAL_LEVEL": str(params.canonical_level),
        "RA_MIN_LEVEL": str(params.min_level),
        "RA_MAX_LEVEL": str(params.max_level),
        "RA_POOL_MAX": "1" if params.mode == "max" else "0",
    }


def macro_flags(params: RoIAlignParams) -> list[str]:
    """:func:`kernel_macros` as compiler flags, e.g. ``["-DRA_OUTPUT_SIZE=7", ...]``."""
    return [f"-D{k}={v}" for k, v in kernel_macros(params).items()]
