"""Engine manifest: what a TensorRT engine was built with, and whether it can run here.

A TensorRT engine only loads under the TensorRT version, GPU compute capability and OS
that built it, and TensorRT has no way to ask an engine file beforehand. So the build
step writes ``<engine>.manifest.json`` (a :class:`Manifest`) next to every engine, and
the runner compares it with :func:`engines.machine.collect_runtime_environment` before
deserializing::

    manifest = read_manifest(manifest_path_for(engine_path))
    warnings = ensure_compatible(manifest, collect_runtime_environment(),
                                 Requirements(precision="fp16", batch_size=8))

:func:`ensure_compatible` raises :class:`EngineIncompatibleError`, whose message names
every field that differs and the exact ``build-engine`` command that rebuilds the engine
for this machine.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass as std_dataclass
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from engines.build_command import (
    INPUT_SIZE_FLAG,
    MAX_BATCH_FLAG,
    MIN_BATCH_FLAG,
    PRECISION_FLAG,
    Precision,
    with_options,
)

SCHEMA = "maskrcnn-streamer/engine-manifest/1"
HardwareCompatibility = Literal["none", "same_compute_capability", "ampere_plus"]


@dataclass(frozen=True)
class RuntimeEnvironment:
    """What a machine offers an engine. None = absent or unknown."""

    tensorrt_version: str | None
    gpu_name: str | None
    compute_capability: str | None
    """``"major.minor"``, e.g. ``"8.6"``."""
    driver_version: str | None
    cuda_version: str | None
    """Highest CUDA version the driver supports, e.g. ``"13.0"``."""
    os: str
    """``platform.system().lower()``: ``"linux"``, ``"windows"``."""


@dataclass(frozen=True)
class BatchProfile:
    """TensorRT optimization profile on the batch dimension: ``1 <= min <= opt <= max``."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    def __contains__(self, batch_size: object) -> bool:
        return isinstance(batch_size, int) and self.min <= batch_size <= self.max


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor; ``-1`` marks a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PluginRef:
    namespace: str
    name: str
    version: str

    @property
    def id(self) -> str:
        return f"{self.namespace}::{self.name}"


@dataclass(frozen=True)
class BuildArgs:
    """The build inputs that decide which engine comes out (with the machine)."""

    precision: Precision
    batch: BatchProfile
    input_size: tuple[int, int]
    """``(H, W)`` of the network input in pixels."""
    onnx_sha256: str
    weights_sha256: str
    plugins: tuple[PluginRef, ...] = ()
    hardware_compatibility: HardwareCompatibility = "none"
    version_compatible: bool = False


@dataclass(frozen=True)
class Manifest:
    """Everything recorded next to an engine at build time (JSON, schema :data:`SCHEMA`)."""

    environment: RuntimeEnvironment
    """The machine that built the engine."""
    build: BuildArgs
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    class_names: tuple[str, ...]
    preprocessing: dict[str, Any]
    """JSON object, e.g. ``{"mean": [...], "std": [...], "min_size": 800, "max_size": 1333}``."""
    build_command: tuple[str, ...]
    """argv that built the engine, starting with ``build-engine``."""
    created_at: str
    schema: str = SCHEMA
    graph: dict[str, str] | None = None
    """The ONNX graph's metadata (``engines.static_io.GraphInfo.to_metadata()``): frame size, input
    mode, class names, model config; None for graphs without it."""
    parity: dict[str, Any] | None = None
    """The build step's parity report against PyTorch (``build_engine.parity_report``); None = not run."""

    def to_json(self) -> str:
        exclude = {name for name in ("graph", "parity") if getattr(self, name) is None}
        return _MANIFEST_ADAPTER.dump_json(self, indent=2, exclude=exclude or None).decode()

    @staticmethod
    def from_json(text: str, source: str = "manifest") -> Manifest:
        """Parse and validate; ValueError names ``source`` and what is wrong."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} is not JSON ({exc}): rebuild the engine with build-engine") from exc
        schema = raw.get("schema") if isinstance(raw, dict) else None
        if schema != SCHEMA:
            raise ValueError(f"{source} has schema {schema!r}, this version reads {SCHEMA!r}: rebuild the engine with build-engine")
        try:
            return _MANIFEST_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            raise ValueError(f"{source} is not a valid engine manifest: {exc}") from exc


_MANIFEST_ADAPTER = TypeAdapter(Manifest)


def manifest_path_for(engine_path: str | Path) -> Path:
    """``model.plan`` → ``model.plan.manifest.json`` (same folder)."""
    p = Path(engine_path)
    return p.with_name(p.name + ".manifest.json")


def read_manifest(path: str | Path) -> Manifest:
    """Load a manifest file. FileNotFoundError / ValueError say to rebuild the engine."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"engine manifest {p} not found: engines are only loaded with their manifest; rebuild with build-engine")
    return Manifest.from_json(p.read_text(encoding="utf-8"), source=str(p))


# --------------------------------------------------------------------------- compatibility
@std_dataclass(frozen=True)
class Requirements:
    """What the caller needs from the engine (None / empty = no requirement)."""

    precision: Precision | None = None
    batch_size: int | None = None
    input_size: tuple[int, int] | None = None
    plugins: Mapping[str, str] = field(default_factory=dict)
    """Plugin id (``namespace::name``) → the version the caller's code implements."""


@std_dataclass(frozen=True)
class Mismatch:
    """One difference between an engine's manifest and this machine or the caller's needs."""

    field: str
    """Dotted manifest field, e.g. ``"environment.tensorrt_version"``."""
    engine: str
    here: str
    rule: str
    fatal: bool = True
    """False: the engine loads, but something is worth a warning."""
    rebuild_args: tuple[tuple[str, str], ...] = ()
    """``build-engine`` options to change when rebuilding, e.g. ``(("--precision", "fp16"),)``."""

    def describe(self) -> str:
        return f"{self.field}: engine has {self.engine}, here {self.here} ({self.rule})"


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".") if p.isdigit())


def _check_environment(built: RuntimeEnvironment, b: BuildArgs, env: RuntimeEnvironment) -> list[Mismatch]:
    out: list[Mismatch] = []
    if env.tensorrt_version is None:
        out.append(Mismatch("environment.tensorrt_version", str(built.tensorrt_version), "no TensorRT",
                            "loading an engine needs TensorRT"))
    elif env.tensorrt_version != built.tensorrt_version:
        bt, et = _version_tuple(str(built.tensorrt_version)), _version_tuple(env.tensorrt_version)
        if not (b.version_compatible and bt[:1] == et[:1] and et >= bt):
            rule = ("a version-compatible engine runs on the same or a later TensorRT of its major version"
                    if b.version_compatible else "an engine only loads under the TensorRT version that built it")
            out.append(Mismatch("environment.tensorrt_version", str(built.tensorrt_version), env.tensorrt_version, rule))
    if env.os != built.os:
        out.append(Mismatch("environment.os", built.os, env.os, "engines are tied to the OS that built them"))
    if env.compute_capability is None:
        out.append(Mismatch("environment.compute_capability", str(built.compute_capability), "no CUDA GPU",
                            "an engine needs an NVIDIA GPU"))
    elif env.compute_capability != built.compute_capability:
        ampere_plus = b.hardware_compatibility == "ampere_plus" and _version_tuple(env.compute_capability) >= (8, 0)
        if not ampere_plus:
            out.append(Mismatch("environment.compute_capability", str(built.compute_capability), env.compute_capability,
                                "an engine only runs on GPUs of the compute capability that built it"))
    elif env.gpu_name != built.gpu_name:
        out.append(Mismatch("environment.gpu_name", str(built.gpu_name), str(env.gpu_name),
                            "kernels were timed on another GPU model: rebuild here for best speed", fatal=False))
    for name in ("cuda_version", "driver_version"):
        was, now = getattr(built, name), getattr(env, name)
        if was and now and _version_tuple(now) < _version_tuple(was):
            out.append(Mismatch(f"environment.{name}", was, now,
                                "an older driver than the build machine's may fail to load the engine's kernels",
                                fatal=False))
    return out


def _check_requirements(b: BuildArgs, plugins: Sequence[PluginRef], req: Requirements) -> list[Mismatch]:
    out: list[Mismatch] = []
    if req.precision is not None and req.precision != b.precision:
        out.append(Mismatch("build.precision", b.precision, req.precision, "the engine computes in another precision",
                            rebuild_args=((PRECISION_FLAG, req.precision),)))
    if req.batch_size is not None and req.batch_size not in b.batch:
        fix = (MAX_BATCH_FLAG, str(req.batch_size)) if req.batch_size > b.batch.max else (MIN_BATCH_FLAG, str(req.batch_size))
        out.append(Mismatch("build.batch", f"batch {b.batch.min}..{b.batch.max}", f"batch {req.batch_size}",
                            "the batch size must lie in the engine's optimization profile", rebuild_args=(fix,)))
    if req.input_size is not None and tuple(req.input_size) != tuple(b.input_size):
        h, w = req.input_size
        out.append(Mismatch("build.input_size", "x".join(map(str, b.input_size)), f"{h}x{w}",
                            "the engine's input size is fixed at build time", rebuild_args=((INPUT_SIZE_FLAG, f"{h}x{w}"),)))
    by_id = {p.id: p for p in plugins}
    for pid, version in sorted(req.plugins.items()):
        if pid in by_id and by_id[pid].version != version:
            out.append(Mismatch("build.plugins", f"{pid} v{by_id[pid].version}", f"{pid} v{version}",
                                "the engine holds another version of the plugin's kernel"))
    return out


def check_compatible(manifest: Manifest, env: RuntimeEnvironment, required: Requirements | None = None) -> list[Mismatch]:
    """Every difference that matters between ``manifest`` and this machine / the caller's needs.

    Fatal mismatches mean the engine must not be loaded; the others are warnings.
    """
    out = _check_environment(manifest.environment, manifest.build, env)
    if required is not None:
        out += _check_requirements(manifest.build, manifest.build.plugins, required)
    return out


def rebuild_command(manifest: Manifest, mismatches: Sequence[Mismatch] = ()) -> str | None:
    """The recorded ``build-engine`` command with the options the mismatches ask for; None if unrecorded.

    The edit itself is :func:`engines.build_command.with_options`.
    """
    if not manifest.build_command:
        return None
    return shlex.join(with_options(manifest.build_command, [arg for m in mismatches for arg in m.rebuild_args]))


def compatibility_message(manifest: Manifest, mismatches: Sequence[Mismatch], engine: str | Path = "engine") -> str:
    """Human-readable refusal: what differs, and how to rebuild the engine for this machine."""
    fatal = [m for m in mismatches if m.fatal]
    lines = [f"TensorRT engine {engine} cannot be used here:"]
    lines += [f"  - {m.describe()}" for m in fatal]
    cmd = rebuild_command(manifest, fatal)
    if cmd is None:
        lines.append("Rebuild it on this machine with build-engine (its build command was not recorded).")
    else:
        lines += ["Rebuild it on this machine with:", f"  {cmd}"]
    return "\n".join(lines)


class EngineIncompatibleError(RuntimeError):
    """The engine's manifest rules out loading it here; ``mismatches`` says why."""

    def __init__(self, message: str, mismatches: Sequence[Mismatch]) -> None:
        super().__init__(message)
        self.mismatches = tuple(mismatches)


def ensure_compatible(
    manifest: Manifest, env: RuntimeEnvironment, required: Requirements | None = None, engine: str | Path = "engine"
) -> list[Mismatch]:
    """Raise :class:`EngineIncompatibleError` on any fatal mismatch; return the warnings."""
    mismatches = check_compatible(manifest, env, required)
    if any(m.fatal for m in mismatches):
        raise EngineIncompatibleError(compatibility_message(manifest, mismatches, engine), mismatches)
    return mismatches
