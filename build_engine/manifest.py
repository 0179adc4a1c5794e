"""Build-time side of the engine manifest: collect the facts, write them next to the engine.

The data model and the compatibility check live in :mod:`engines.manifest` (the runner
reads manifests and must not import ``build_engine``). After building ``model.plan``::

    manifest = build_manifest(
        onnx_path="model.onnx", weights_path="model.safetensors", precision="fp16",
        batch=BatchProfile(1, 4, 8), input_size=(800, 1344), class_names=names,
        preprocessing={"mean": [...], "std": [...]}, argv=sys.argv,
    )
    write_manifest(manifest, "model.plan")      # → model.plan.manifest.json
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engines.build_command import PROGRAM, Precision
from engines.machine import collect_runtime_environment
from engines.manifest import (
    BatchProfile,
    BuildArgs,
    HardwareCompatibility,
    Manifest,
    PluginRef,
    RuntimeEnvironment,
    TensorSpec,
    manifest_path_for,
)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (streamed)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def onnx_io_and_plugins(onnx_path: str | Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], tuple[PluginRef, ...]]:
    """Graph inputs, outputs (dtype names, ``-1`` for symbolic dims) and plugin nodes of an ONNX file.

    A plugin node is one with a ``plugin_namespace`` attribute or a custom domain; its
    version is the ``plugin_version`` attribute (TensorRT's default ``"1"`` if absent).
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}

    def spec(value: Any) -> TensorSpec:
        t = value.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return TensorSpec(name=value.name, dtype=dtype, shape=shape)

    plugins: dict[str, PluginRef] = {}
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        namespace = attrs.get("plugin_namespace", node.domain if node.domain not in ("", "ai.onnx", "ai.onnx.ml") else None)
        if namespace is None:
            continue
        ns = namespace.decode() if isinstance(namespace, bytes) else str(namespace)
        version = attrs.get("plugin_version", b"1")
        ref = PluginRef(namespace=ns, name=node.op_type,
                        version=version.decode() if isinstance(version, bytes) else str(version))
        plugins[ref.id] = ref
    inputs = tuple(spec(v) for v in graph.input if v.name not in initializers)
    outputs = tuple(spec(v) for v in graph.output)
    return inputs, outputs, tuple(plugins[k] for k in sorted(plugins))


def onnx_metadata(onnx_path: str | Path) -> dict[str, str]:
    """The ONNX file's ``metadata_props`` as a dict (empty when it has none)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def recorded_command(argv: Sequence[str] | None = None) -> tuple[str, ...]:
    """``("build-engine", *args)`` from ``argv`` (default ``sys.argv``), program name normalized."""
    args = list(sys.argv if argv is None else argv)
    return (PROGRAM, *args[1:])


def build_manifest(
    *,
    onnx_path: str | Path,
    weights_path: str | Path,
    precision: Precision,
    batch: BatchProfile,
    input_size: tuple[int, int],
    class_names: Sequence[str],
    preprocessing: Mapping[str, Any],
    argv: Sequence[str] | None = None,
    hardware_compatibility: HardwareCompatibility = "none",
    version_compatible: bool = False,
    env: RuntimeEnvironment | None = None,
) -> Manifest:
    """The manifest of an engine built here from ``onnx_path`` (I/O, plugins and metadata read from it).

    Args:
        env: the build machine; None = :func:`engines.machine.collect_runtime_environment`.
        argv: the build command line (default ``sys.argv``), recorded for rebuilds.
    """
    inputs, outputs, plugins = onnx_io_and_plugins(onnx_path)
    graph = onnx_metadata(onnx_path)
    build = BuildArgs(
        precision=precision,
        batch=batch,
        input_size=(int(input_size[0]), int(input_size[1])),
        onnx_sha256=sha256_file(onnx_path),
        weights_sha256=sha256_file(weights_path),
        plugins=plugins,
        hardware_compatibility=hardware_compatibility,
        version_compatible=version_compatible,
    )
    return Manifest(
        environment=env if env is not None else collect_runtime_environment(),
        build=build,
        inputs=inputs,
        outputs=outputs,
        class_names=tuple(class_names),
        preprocessing=dict(preprocessing),
        build_command=recorded_command(argv),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        graph=graph or None,
    )


def write_manifest(manifest: Manifest, engine_path: str | Path) -> Path:
    """Write ``<engine>.manifest.json`` atomically (temp file + rename); return its path."""
    target = manifest_path_for(engine_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(manifest.to_json() + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
