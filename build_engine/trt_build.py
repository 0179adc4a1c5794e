"""ONNX → serialized TensorRT engine (TensorRT 10.9+ and 11.x).

The TensorRT part is deliberately thin: :func:`build_engine_file` registers the RoIAlign
plugin (when the graph holds its node), parses the ONNX file, sets one optimization
profile over the batch dimension, configures the builder and writes the serialized engine
atomically. Everything that can be decided without TensorRT lives in pure functions
(:func:`profile_shapes`, :func:`network_flag_names`, :func:`hardware_level_name`,
:func:`parser_error_report`), which the tests check here.

Precision policy: the network is strongly typed wherever the flag exists (TensorRT 10) and
always is in TensorRT 11, which has no ``BuilderFlag.FP16``. So precision comes from the
graph: an fp16 engine is built from the fp16 export (``export_onnx(precision="fp16")``,
which keeps box decoding, NMS, RoIAlign accumulation and the mask sigmoid in fp32). No
precision flag is ever set on the builder.

APIs are detected by presence (``hasattr`` / enum members), never by version numbers.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from engines.manifest import BatchProfile, HardwareCompatibility, TensorSpec
from engines.roi_align import RoIAlignParams

TENSORRT_MISSING = "TensorRT is not installed (import tensorrt failed: {error}); use --onnx-only to export the graph, or run on the GPU box"
"""CLI message when an engine is requested on a machine without TensorRT."""

NETWORK_FLAGS = ("STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS")
"""Network creation flags we set when this TensorRT has them: types from the graph (10.x; implied
in 11.x) and the AOT implementation of Python plugins (10.9+; ours defines only AOT anyway)."""

_HARDWARE_LEVELS: dict[str, str | None] = {
    "none": None,
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
    "ampere_plus": "AMPERE_PLUS",
}


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the graph or build the engine; the message says what and where."""


@dataclass(frozen=True)
class EngineBuildOptions:
    """What :func:`build_engine_file` needs besides the ONNX file."""

    onnx_path: Path
    engine_path: Path
    frames: TensorSpec
    """The graph's frame input, batch dimension ``-1`` (e.g. ``frames uint8 [-1, H, W, 3]``)."""
    batch: BatchProfile
    compute_capability: str
    """GPU target of the plugin's PTX, e.g. ``"8.6"`` (the build GPU)."""
    uses_plugin: bool = True
    workspace_bytes: int | None = None
    """Builder workspace pool limit; None = TensorRT's default (the device's memory)."""
    timing_cache: Path | None = None
    """Read before and written after the build when given (same TensorRT version only)."""
    hardware_compatibility: HardwareCompatibility = "none"
    version_compatible: bool = False
    driver_cuda_version: str | None = None
    """CUDA version of the driver that will load the engine (e.g. ``"12.4"``): the plugin's PTX compiler
    must not be newer. None = this machine's driver (``engines.machine``), unknown = no limit."""


# --------------------------------------------------------------------------- pure parts
def profile_shapes(frames: TensorSpec, batch: BatchProfile) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of ``frames`` for the batch profile: dimension 0 takes the batch range.

    Raises:
        ValueError: when a dimension other than the batch is dynamic (engines need a fixed frame
            size: export with ``--input`` or ``--source-size``), or dimension 0 is fixed to
            another batch than the profile allows.
    """
    if not frames.shape:
        raise ValueError(f"input {frames.name!r} has no dimensions; expected [batch, H, W, 3]")
    rest = tuple(frames.shape[1:])
    dynamic = [i + 1 for i, d in enumerate(rest) if d < 0]
    if dynamic:
        raise ValueError(
            f"input {frames.name!r} has dynamic dimensions {dynamic} (shape {list(frames.shape)}): the engine "
            "needs a fixed frame size; export with --input HxW or --source-size WxH"
        )
    fixed = frames.shape[0]
    if fixed >= 0 and not batch.min == batch.max == fixed:
        raise ValueError(
            f"input {frames.name!r} has a fixed batch of {fixed}, the profile asks for "
            f"{batch.min}:{batch.opt}:{batch.max}; export with a dynamic batch"
        )
    return (batch.min, *rest), (batch.opt, *rest), (batch.max, *rest)


def network_flag_names(available: Collection[str]) -> tuple[str, ...]:
    """The :data:`NETWORK_FLAGS` this TensorRT offers (``available``: its flag enum's member names)."""
    return tuple(name for name in NETWORK_FLAGS if name in available)


def create_network(trt: Any, builder: Any) -> Any:
    """``builder.create_network`` with every :data:`NETWORK_FLAGS` member this TensorRT offers."""
    flag_enum = trt.NetworkDefinitionCreationFlag
    flags = 0
    for name in network_flag_names(set(getattr(flag_enum, "__members__", {}))):
        flags |= 1 << int(getattr(flag_enum, name))
    return builder.create_network(flags)


def hardware_level_name(level: HardwareCompatibility) -> str | None:
    """``trt.HardwareCompatibilityLevel`` member for a manifest level; None = leave TensorRT's default."""
    if level not in _HARDWARE_LEVELS:
        raise ValueError(f"hardware compatibility must be one of {sorted(_HARDWARE_LEVELS)}, got {level!r}")
    return _HARDWARE_LEVELS[level]


def parser_error_report(onnx_path: str | Path, errors: Sequence[str]) -> str:
    """One message for the ONNX parser's errors (each already formatted), with what to do next."""
    lines = [f"TensorRT could not parse {onnx_path} ({len(errors)} error(s)):"]
    lines += [f"  - {e}" for e in errors] or ["  - (the parser gave no details)"]
    lines.append("Check the graph with build-engine --onnx-only (ONNX checker + ONNX Runtime parity); "
                 "a plugin node that fails to bind means the plugin was not registered (TensorRT >= 10.9 needed).")
    return "\n".join(lines)


def plugin_params_in(onnx_path: str | Path) -> list[RoIAlignParams]:
    """The distinct RoIAlign specialisations of the graph's plugin nodes (the box and the mask pooler)."""
    import onnx

    from build_engine.plugin_spec import PLUGIN_NAME, PLUGIN_NAMESPACE, params_from_attributes

    found: list[RoIAlignParams] = []
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        if (node.domain, node.op_type) != (PLUGIN_NAMESPACE, PLUGIN_NAME):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute
                 if a.name not in ("plugin_namespace", "plugin_version")}
        params = params_from_attributes(attrs)
        if params not in found:
            found.append(params)
    return found


def _cuda_limit(opts: EngineBuildOptions) -> tuple[int, int] | None:
    """Newest CUDA whose PTX the TensorRT/driver pair loads (``ptx.cuda_limit``)."""
    from build_engine.ptx import cuda_limit, tensorrt_cuda_major

    driver = opts.driver_cuda_version
    if driver is None:
        from engines.machine import collect_runtime_environment

        driver = collect_runtime_environment().cuda_version
    return cuda_limit(driver, tensorrt_cuda_major())


def prepare_plugin_kernels(opts: EngineBuildOptions) -> dict[str, str]:
    """Before any TensorRT call: choose the PTX compiler (CUDA version <= the driver's, major <= TensorRT's
    CUDA major), the PTX target
    (``ampere_plus`` → compute_80) and compile every plugin specialisation of the graph, so that the
    AOT implementation only reads the compiled cache. Returns ``{entry name: PTX}``.

    Raises:
        EngineBuildError: no usable compiler, or the kernel does not compile (the message says why).
    """
    from build_engine.plugin_spec import entry_points
    from build_engine.ptx import compile_ptx, find_compiler, ptx_arch

    try:
        arch = ptx_arch(opts.compute_capability, opts.hardware_compatibility)
        compiler = find_compiler(max_cuda=_cuda_limit(opts))
        kernels = {}
        for params in plugin_params_in(opts.onnx_path):
            ptx = compile_ptx(params, arch, compiler=compiler)
            kernels.update({name: ptx for name in entry_points(params).values()})
    except (RuntimeError, ValueError) as exc:
        raise EngineBuildError(f"cannot prepare the RoIAlign plugin's kernels: {exc}") from exc
    return kernels


# --------------------------------------------------------------------------- TensorRT
def import_tensorrt() -> ModuleType:
    """``import tensorrt``, or ImportError with :data:`TENSORRT_MISSING` (libnvinfer missing included)."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise ImportError(TENSORRT_MISSING.format(error=exc)) from exc
    return tensorrt


def _format_parser_error(err: Any) -> str:
    node = err.node_name() if hasattr(err, "node_name") else ""
    where = f"node {node!r}" if node else f"node #{err.node()}"
    return f"{err.code()} at {where}: {err.desc()}"


def _progress_monitor(trt: ModuleType, on_phase: Callable[[str, int, int], None]) -> Any:
    """A ``trt.IProgressMonitor`` reporting top-level phases as ``on_phase(name, step, steps)``."""

    class Monitor(trt.IProgressMonitor):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            self.top: set[str] = set()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            if parent_phase is None:
                self.top.add(phase_name)
                on_phase(phase_name, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name in self.top:
                on_phase(phase_name, step + 1, self.steps[phase_name])
            return True

        def phase_finish(self, phase_name: str) -> None:
            self.top.discard(phase_name)

    return Monitor()


def build_engine_file(opts: EngineBuildOptions, on_phase: Callable[[str, int, int], None] | None = None) -> Path:
    """Build the engine for ``opts`` on this machine's GPU and write it to ``opts.engine_path``.

    Raises:
        ImportError: TensorRT (or, for the plugin, TensorRT >= 10.9) is missing.
        EngineBuildError: parsing or building failed (the message lists the parser's errors).
    """
    if opts.uses_plugin:
        prepare_plugin_kernels(opts)  # compiler and PTX first: a missing compiler is not a mid-build error
    trt = import_tensorrt()
    if opts.uses_plugin:
        from build_engine.plugin import register_plugin

        register_plugin(opts.compute_capability, hardware_compatibility=opts.hardware_compatibility,
                        max_cuda=_cuda_limit(opts))  # must precede parsing: plugin nodes bind by name
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = create_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(opts.onnx_path)):
        errors = [_format_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(parser_error_report(opts.onnx_path, errors))

    config = builder.create_builder_config()
    if hasattr(trt, "ProfilingVerbosity") and hasattr(config, "profiling_verbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer types and precisions for the inspector
    if opts.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_bytes))
    profile = builder.create_optimization_profile()
    profile.set_shape(opts.frames.name, *profile_shapes(opts.frames, opts.batch))
    config.add_optimization_profile(profile)
    level = hardware_level_name(opts.hardware_compatibility)
    if level is not None:
        if not hasattr(trt, "HardwareCompatibilityLevel") or not hasattr(trt.HardwareCompatibilityLevel, level):
            raise EngineBuildError(f"this TensorRT has no hardware compatibility level {level}; build without it")
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
    if opts.version_compatible:
        if not hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"):
            raise EngineBuildError("this TensorRT cannot build version-compatible engines; build without it")
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    cache = None
    if opts.timing_cache is not None and hasattr(config, "create_timing_cache"):
        data = opts.timing_cache.read_bytes() if opts.timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)
    if on_phase is not None and hasattr(trt, "IProgressMonitor") and hasattr(config, "progress_monitor"):
        config.progress_monitor = _progress_monitor(trt, on_phase)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT could not build an engine from {opts.onnx_path} (its errors are logged above); "
            "a smaller --batch or more GPU memory may help"
        )
    if cache is not None and opts.timing_cache is not None:
        _write_atomic(opts.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    _write_atomic(opts.engine_path, bytes(memoryview(serialized)))
    return opts.engine_path


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
