"""A folder of TensorRT engines, each with its manifest, reused or rebuilt for this machine.

The daemon asks for "an engine of this model for this machine and these build arguments"::

    from build_engine.cli import build_for_cache          # the daemon passes the builder in
    engine = resolve_engine("model.safetensors", "/var/cache/maskrcnn", EngineRequest(precision="fp16"),
                            rebuild=True, build=build_for_cache)
    runner = TrtRunner(engine)

:func:`resolve_engine` scans ``cache_dir`` for engines whose manifest was built from the
same weights with compatible arguments (:func:`request_mismatches`) on a compatible
machine (:func:`engines.manifest.check_compatible`) and returns the first. Otherwise, if
``rebuild`` is allowed, it calls ``build`` and files the result under
``<model stem>-<cache_key>.plan``, where the key is :func:`engines.manifest.cache_key` of
the new manifest (TensorRT version, compute capability, OS and every build argument). A
cached engine whose file name disagrees with its manifest's key is ignored.

``engines`` must not import ``build_engine``, so the build step is a callable handed in
(``build_engine.cli.build_for_cache``); tests and other tools can pass their own. Builds
in one cache folder are serialized with a lock file (``fcntl``), so two processes never
build the same engine at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engines.manifest import (
    BatchProfile,
    Manifest,
    Precision,
    Requirements,
    RuntimeEnvironment,
    cache_key,
    check_compatible,
    manifest_path_for,
    read_manifest,
)

ENGINE_SUFFIX = ".plan"
LOCK_NAME = ".build.lock"


@dataclass(frozen=True)
class EngineRequest:
    """The build arguments the daemon wants (mirrors ``build-engine``'s options)."""

    precision: Precision = "fp32"
    batch: BatchProfile = field(default_factory=lambda: BatchProfile(1, 4, 8))
    source_size: tuple[int, int] | None = None
    """``(H, W)`` of the camera frames the engine takes (``--source-size WxH``); or ..."""
    input_size: tuple[int, int] | None = None
    """... ``(H, W)`` of the network input when frames arrive already resized (``--input-size HxW``)."""
    roi_align: Literal["plugin", "onnx"] = "plugin"
    parity_frames: int = 4

    def __post_init__(self) -> None:
        if (self.source_size is None) == (self.input_size is None):
            raise ValueError("an EngineRequest needs exactly one of source_size (camera frames) or input_size, "
                             f"got source_size={self.source_size}, input_size={self.input_size}")

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(H, W)`` of the frames the engine's input takes."""
        size = self.source_size if self.source_size is not None else self.input_size
        assert size is not None
        return size


EngineBuilder = Callable[[Path | None, Path, EngineRequest], Path]
"""``build(model_path, engine_path, request) -> engine_path``: builds the engine and writes its
manifest next to it (``build_engine.cli.build_for_cache``); raises on failure."""


class EngineCacheMiss(LookupError):
    """No usable engine in the cache and rebuilding is not allowed; the message says why and what to run."""


def sha256_of(path: str | Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def request_mismatches(manifest: Manifest, request: EngineRequest, weights_sha256: str) -> list[str]:
    """Why an engine built as ``manifest`` does not serve ``request`` for these weights (empty = it does)."""
    b = manifest.build
    out: list[str] = []
    if b.weights_sha256 != weights_sha256:
        out.append("built from other weights")
    if b.precision != request.precision:
        out.append(f"precision {b.precision}, need {request.precision}")
    if not (b.batch.min <= request.batch.min and request.batch.max <= b.batch.max):
        out.append(f"batch {b.batch.min}..{b.batch.max}, need {request.batch.min}..{request.batch.max}")
    shape = manifest.inputs[0].shape if manifest.inputs else ()
    frames = tuple(shape[1:3]) if len(shape) == 4 else None
    if frames != request.frame_size:
        out.append(f"frames {frames}, need {request.frame_size}")
    if request.input_size is not None and tuple(b.input_size) != request.input_size:
        out.append(f"input size {tuple(b.input_size)}, need {request.input_size}")
    if bool(b.plugins) != (request.roi_align == "plugin"):
        out.append(f"RoIAlign {'plugin' if b.plugins else 'onnx'}, need {request.roi_align}")
    if manifest.parity is not None and manifest.parity.get("passed") is False:
        out.append("its parity check against PyTorch failed")
    return out


def engine_name(model_path: Path | None, key: str) -> str:
    """``<model stem>-<key>.plan`` (``demo`` for the embedded model)."""
    return f"{model_path.stem if model_path is not None else 'demo'}-{key}{ENGINE_SUFFIX}"


def cached_engines(cache_dir: Path) -> Iterator[tuple[Path, Manifest]]:
    """Engines in ``cache_dir`` with a readable manifest whose cache key matches the file name."""
    for engine in sorted(cache_dir.glob(f"*{ENGINE_SUFFIX}")):
        try:
            manifest = read_manifest(manifest_path_for(engine))
        except (OSError, ValueError):
            continue
        if engine.stem.endswith("-" + cache_key(manifest)):
            yield engine, manifest


def find_engine(cache_dir: Path, weights_sha256: str, request: EngineRequest,
                env: RuntimeEnvironment) -> tuple[Path | None, list[str]]:
    """The first usable cached engine, and for each rejected one a line saying why."""
    rejected: list[str] = []
    needs = Requirements(precision=request.precision)
    for engine, manifest in cached_engines(cache_dir):
        reasons = request_mismatches(manifest, request, weights_sha256)
        reasons += [m.describe() for m in check_compatible(manifest, env, needs) if m.fatal]
        if not reasons:
            return engine, rejected
        rejected.append(f"{engine.name}: {'; '.join(reasons)}")
    return None, rejected


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    with open(cache_dir / LOCK_NAME, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def resolve_engine(model_path: str | Path | None, cache_dir: str | Path, request: EngineRequest, rebuild: bool,
                   build: EngineBuilder | None = None, env: RuntimeEnvironment | None = None,
                   weights_path: str | Path | None = None) -> Path:
    """A compatible engine of the model for this machine: cached, or built now when ``rebuild``.

    Args:
        model_path: the model given to ``build-engine --model`` (None = the embedded demo model).
        weights_path: the file whose sha256 the manifest records (default ``model_path``;
            pass the demo model's file for None).
        build: the build step, required when ``rebuild`` is True.
        env: this machine (default :func:`engines.machine.collect_runtime_environment`).

    Raises:
        EngineCacheMiss: nothing usable and ``rebuild`` is False (lists every rejected engine).
        RuntimeError: the build did not produce an engine with a readable manifest.
    """
    from engines.machine import collect_runtime_environment

    model = Path(model_path) if model_path is not None else None
    weights = Path(weights_path) if weights_path is not None else model
    if weights is None:
        raise ValueError("resolve_engine needs weights_path for the embedded demo model (its file's sha256)")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    env = env or collect_runtime_environment()
    sha = sha256_of(weights)
    with _locked(cache):
        found, rejected = find_engine(cache, sha, request, env)
        if found is not None:
            return found
        if not rebuild or build is None:
            why = "\n".join(f"  - {r}" for r in rejected) or "  (no engines there)"
            raise EngineCacheMiss(
                f"no engine in {cache} fits {model or 'the demo model'} on this machine with {request}:\n{why}\n"
                "Enable rebuilding in the configuration, or build one with build-engine --model ... --out "
                f"{cache}/<name>{ENGINE_SUFFIX}")
        staging = cache / f".building-{os.getpid()}{ENGINE_SUFFIX}"
        built = Path(build(model, staging, request))
        try:
            manifest = read_manifest(manifest_path_for(built))
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"the build step wrote {built} without a readable manifest: {exc}") from exc
        final = cache / engine_name(model, cache_key(manifest))
        command = tuple(str(final) if a == str(built) else a for a in manifest.build_command)
        manifest_path_for(final).write_text(dataclasses.replace(manifest, build_command=command).to_json() + "\n",
                                            encoding="utf-8")
        os.replace(built, final)
        manifest_path_for(built).unlink(missing_ok=True)
        return final
