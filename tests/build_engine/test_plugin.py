"""The TensorRT plugin module: attributes, launch geometry, macros, and its registration."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from build_engine.plugin import (
    BLOCK_SIZE,
    GRID_BLOCKS,
    IO_TYPES,
    PluginTarget,
    define_plugin,
    kernel_name,
    kernel_scalars,
    plugin_attributes,
    register_plugin,
    stale_builder_risk,
)
from build_engine.plugin_spec import (
    ATTRIBUTE_NAMES,
    KERNEL_SCALAR_ARGS,
    PLUGIN_ID,
    entry_points,
    kernel_macros,
    macro_flags,
    onnx_attributes,
    params_from_attributes,
)
from build_engine.ptx import Compiler, find_compiler, find_nvcc, nvrtc_available
from engines.roi_align import RoIAlignParams

INPUTS = ["features0", "features1", "features2", "features3", "rois"]


def _tensorrt_loads() -> bool:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


# ----------------------------------------------------------------------------- attributes


@pytest.mark.parametrize(
    "params",
    [RoIAlignParams(), RoIAlignParams(aligned=True, sampling_ratio=0, output_size=14),
     RoIAlignParams(canonical_scale=112.5, canonical_level=3, min_level=1, max_level=4)],
)
def test_attributes_round_trip_as_onnx_and_as_tensorrt_arrays(params: RoIAlignParams) -> None:
    assert params_from_attributes(onnx_attributes(params)) == params
    arrays = plugin_attributes(params)
    assert list(arrays) == list(ATTRIBUTE_NAMES)
    assert arrays["canonical_scale"].dtype == np.float32
    assert all(a.dtype == np.int32 and a.ndim == 1 for n, a in arrays.items() if n != "canonical_scale")
    assert params_from_attributes(arrays) == params


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"aligned": 2}, "'aligned' must be 0 or 1, got 2"),
        ({"feature_strides": [4, 8, 16, 64]}, r"'feature_strides' must be 2\*\*k .*got \[4, 8, 16, 64\]"),
        ({"max_level": 6, "feature_strides": [4, 8, 16, 32, 64]}, "exactly 4 levels"),
        ({"output_size": np.array([7, 7], dtype=np.int32)}, "'output_size' must hold exactly one value"),
        ({"sampling_ratio": 1.5}, "'sampling_ratio' must be an integer"),
        ({"canonical_scale": -224.0}, "'canonical_scale' must be > 0"),
        ({"canonical_scale": float("nan")}, "must be finite"),
        ({"output_size": 0}, "output_size must be >= 1"),
        ({"mode": 1}, r"unknown \['mode'\]"),
    ],
)
def test_invalid_attributes_are_refused_with_the_rule(change: dict[str, Any], message: str) -> None:
    attrs = {**onnx_attributes(RoIAlignParams()), **change}
    with pytest.raises(ValueError, match=message):
        params_from_attributes(attrs)


def test_missing_attribute_is_named() -> None:
    attrs = onnx_attributes(RoIAlignParams())
    del attrs["canonical_level"]
    with pytest.raises(ValueError, match=r"missing \['canonical_level'\]"):
        params_from_attributes(attrs)


# ----------------------------------------------------------------------------- geometry, macros


def test_fixed_grid_is_one_wave_of_a_large_gpu() -> None:
    # the kernel's grid-stride loop covers any output with a fixed grid (on the GPU: tests/gpu/test_roi_align_kernel.py)
    assert GRID_BLOCKS * BLOCK_SIZE == 262144


def test_kernel_scalars_follow_the_kernel_signature() -> None:
    shapes = [(2, 256, 200, 336), (2, 256, 100, 168), (2, 256, 50, 84), (2, 256, 25, 42)]

    scalars = kernel_scalars(shapes, (1000, 5))

    assert dict(zip(KERNEL_SCALAR_ARGS, scalars, strict=True)) == {
        "num_rois": 1000, "channels": 256, "batch": 2, "h0": 200, "w0": 336, "h1": 100, "w1": 168,
        "h2": 50, "w2": 84, "h3": 25, "w3": 42,
    }


def test_kernel_macros_bake_every_parameter() -> None:
    assert kernel_macros(RoIAlignParams()) == {
        "RA_OUTPUT_SIZE": "7", "RA_SAMPLING_RATIO": "2", "RA_ALIGNED": "0", "RA_CANONICAL_SCALE": "224.0f",
        "RA_CANONICAL_LEVEL": "4", "RA_MIN_LEVEL": "2", "RA_MAX_LEVEL": "5", "RA_POOL_MAX": "0",
        "RA_ENTRY_F32": entry_points(RoIAlignParams())["float32"],
        "RA_ENTRY_F16": entry_points(RoIAlignParams())["float16"],
    }
    odd = kernel_macros(RoIAlignParams(canonical_scale=0.1, aligned=True, mode="max"))
    assert odd["RA_ALIGNED"] == "1" and odd["RA_POOL_MAX"] == "1"
    assert np.float32(float(odd["RA_CANONICAL_SCALE"].rstrip("f"))) == np.float32(0.1)
    assert macro_flags(RoIAlignParams())[0] == "-DRA_OUTPUT_SIZE=7"


def test_kernel_name_per_dtype_and_specialisation() -> None:
    box, mask = RoIAlignParams(), RoIAlignParams(output_size=14)
    assert kernel_name(box, "float16") == entry_points(box)["float16"]
    assert kernel_name(box, "float32") != kernel_name(mask, "float32")
    with pytest.raises(ValueError, match="float32 or float16"):
        kernel_name(box, "bfloat16")


@pytest.mark.parametrize(("version", "risk"), [("10.8.0.43", False), ("10.9.0.34", True), ("10.14.1.48", True),
                                                ("10.15.0.1", False), ("11.4.0.106", False), ("garbage", False)])
def test_stale_builder_versions(version: str, risk: bool) -> None:
    assert stale_builder_risk(version) is risk


# ----------------------------------------------------------------------------- registration


def test_importing_the_module_does_not_import_tensorrt() -> None:
    code = "import sys, build_engine.plugin; print('tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_registration_without_tensorrt_raises_a_clear_import_error() -> None:
    if _tensorrt_loads():
        pytest.skip("TensorRT is installed here")
    with pytest.raises(ImportError, match=r"TensorRT >= 10.9 with its libraries \(libnvinfer\)"):
        register_plugin("8.6")


def test_registration_with_tensorrt() -> None:
    if not _tensorrt_loads():
        pytest.skip("TensorRT libraries (libnvinfer) not installed")
    import tensorrt as trt

    register_plugin("8.6")
    register_plugin("8.6")  # idempotent
    ns, name = PLUGIN_ID.split("::")
    assert trt.get_plugin_registry().get_creator(name, "1", ns) is not None


class _Builder:
    """Stand-in for TensorRT's expression builder: one generation per TensorRT callback."""

    generation = 0


class _Expr:
    """Stand-in for a shape expression, tagged with the builder generation that created it.

    Any arithmetic checks that its operands belong to the current callback's builder: mixing
    expressions across callbacks is the stale-builder hazard the plugin's safe form avoids.
    """

    def __init__(self, value: int, generation: int | None = None) -> None:
        self.value = value
        self.generation = _Builder.generation if generation is None else generation

    def _op(self, other: Any, fn: Callable[[int, int], int]) -> _Expr:
        other = other if isinstance(other, _Expr) else _Expr(other)
        for e in (self, other):
            assert e.generation == _Builder.generation, "arithmetic on an expression from another callback"
        return _Expr(fn(self.value, other.value))

    def __mul__(self, other: Any) -> _Expr:
        return self._op(other, lambda a, b: a * b)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Expr | int) and self.value == (other.value if isinstance(other, _Expr) else other)

    __hash__ = None  # type: ignore[assignment]


class _Shape(tuple[_Expr, ...]):
    """Stand-in for tensorrt.plugin.ShapeExprs."""

    def numel(self) -> _Expr:
        out = _Expr(1)
        for e in self:
            out = out * e
        return out


class _Desc:
    """Stand-in for tensorrt.plugin.TensorDesc."""

    def __init__(self, shape: tuple[int | _Expr, ...], dtype: str) -> None:
        self.shape_expr = _Shape(e if isinstance(e, _Expr) else _Expr(e) for e in shape)
        self.dtype = dtype


def _fake_tensorrt() -> tuple[SimpleNamespace, SimpleNamespace, dict[str, Callable[..., Any]]]:
    """Just enough of ``tensorrt`` / ``tensorrt.plugin`` to run the decorated functions here."""
    defined: dict[str, Callable[..., Any]] = {}

    def decorator(kind: str) -> Callable[[str], Callable[[Callable[..., Any]], Callable[..., Any]]]:
        def by_id(plugin_id: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            assert plugin_id == PLUGIN_ID

            def record(fn: Callable[..., Any]) -> Callable[..., Any]:
                defined[kind] = fn
                return fn

            return record

        return by_id

    def no_arithmetic(*_: Any) -> Any:
        raise AssertionError("the AOT implementation must not do shape-expression arithmetic")

    trtp = SimpleNamespace(
        TensorDesc=_Desc, AutoTuneCombination=lambda types, formats: (types, formats),
        KernelLaunchParams=SimpleNamespace, SymInt32=lambda e: e, SymIntExprs=SimpleNamespace(from_tuple=tuple),
        cdiv=no_arithmetic, max=no_arithmetic, from_shape_expr=lambda shape, dtype: _Desc(shape, dtype),
        register=decorator("register"), autotune=decorator("autotune"), aot_impl=decorator("aot_impl"),
    )
    return SimpleNamespace(float32="fp32", float16="fp16"), trtp, defined


def _target() -> PluginTarget:
    return PluginTarget((8, 6), find_compiler())


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a TensorRT callback under a fresh builder generation."""
    _Builder.generation += 1
    return fn(*args, **kwargs)


def test_decorated_signatures_follow_the_tensorrt_plugin_schema() -> None:
    trt, trtp, defined = _fake_tensorrt()
    define_plugin(trt, trtp, PluginTarget((8, 6), Compiler("nvcc", (13, 0), "nvcc")))

    def params(kind: str) -> list[str]:
        return list(inspect.signature(defined[kind]).parameters)

    assert params("register") == INPUTS + list(ATTRIBUTE_NAMES)
    assert params("autotune") == [*INPUTS, "outputs"]
    assert params("aot_impl") == INPUTS + list(ATTRIBUTE_NAMES) + ["outputs", "tactic"]
    assert defined["autotune"](*[None] * 6) == [(IO_TYPES, "LINEAR")]
    assert len(IO_TYPES.split(",")) == len(INPUTS) + 1


needs_compiler = pytest.mark.skipif(find_nvcc() is None and not nvrtc_available(),
                                    reason="needs nvcc or cuda-python (NVRTC) to compile the PTX")


def _inputs(dtype: str) -> tuple[list[tuple[int, ...]], list[_Desc]]:
    shapes: list[tuple[int, ...]] = [(2, 256, 200, 336), (2, 256, 100, 168), (2, 256, 50, 84), (2, 256, 25, 42)]
    return shapes, [_Desc(s, dtype) for s in shapes] + [_Desc((1000, 5), "fp32")]


@needs_compiler
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_shape_function_and_aot_implementation(dtype: str) -> None:
    trt, trtp, defined = _fake_tensorrt()
    define_plugin(trt, trtp, _target())
    params = RoIAlignParams(output_size=14)
    shapes, inputs = _inputs(dtype)
    attrs = plugin_attributes(params)

    out = _call(defined["register"], *inputs, **attrs)
    name, ptx, launch, scalars = _call(defined["aot_impl"], *inputs, **attrs, outputs=(out,), tactic=0)

    assert tuple(out.shape_expr) == (1000, 256, 14, 14) and out.dtype == dtype
    entry = entry_points(params)["float32" if dtype == "fp32" else "float16"]
    assert name == entry and f".entry {entry}(" in ptx and ".target sm_86" in ptx
    assert (launch.grid_x, launch.block_x, launch.shared_mem) == (GRID_BLOCKS, BLOCK_SIZE, 0)
    assert [e.value for e in scalars] == kernel_scalars(shapes, (1000, 5))


@needs_compiler
def test_two_poolers_never_share_expressions_or_kernel_names_across_callbacks() -> None:
    """TensorRT 10.9-10.14 may hand a stale builder across nodes: each callback must only use its own
    arguments (the stand-in fails on any arithmetic that mixes callbacks), and the two nodes' kernels
    must have different names."""
    trt, trtp, defined = _fake_tensorrt()
    define_plugin(trt, trtp, _target())
    box, mask = plugin_attributes(RoIAlignParams(output_size=7)), plugin_attributes(RoIAlignParams(output_size=14))
    _, box_in = _inputs("fp32")
    _, mask_in = _inputs("fp32")

    box_out = _call(defined["register"], *box_in, **box)
    mask_out = _call(defined["register"], *mask_in, **mask)
    generation = _Builder.generation
    assert all(e.generation == generation for e in mask_out.shape_expr[2:]), "constants of this call's builder"
    assert mask_out.shape_expr[0] is mask_in[4].shape_expr[0], "input expressions passed through, not rebuilt"
    box_kernel = _call(defined["aot_impl"], *box_in, **box, outputs=(box_out,), tactic=0)
    mask_kernel = _call(defined["aot_impl"], *mask_in, **mask, outputs=(mask_out,), tactic=0)

    assert tuple(box_out.shape_expr)[2:] == (7, 7) and tuple(mask_out.shape_expr)[2:] == (14, 14)
    assert box_kernel[0] != mask_kernel[0]
    assert box_kernel[0] in box_kernel[1] and box_kernel[0] not in mask_kernel[1]


def test_shape_function_refuses_bad_attributes() -> None:
    trt, trtp, defined = _fake_tensorrt()
    define_plugin(trt, trtp, PluginTarget((8, 6), Compiler("nvcc", (13, 0), "nvcc")))
    inputs = [_Desc((1, 8, 64 // 2**k, 64 // 2**k), "fp32") for k in range(4)] + [_Desc((3, 5), "fp32")]
    attrs = {**plugin_attributes(RoIAlignParams()), "aligned": np.array([3], dtype=np.int32)}

    with pytest.raises(ValueError, match="'aligned' must be 0 or 1"):
        _call(defined["register"], *inputs, **attrs)
