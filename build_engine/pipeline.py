"""The build step as a library: options in, ONNX graph, TensorRT engine and manifest out.

::

    from build_engine.options import BuildOptions
    from build_engine.pipeline import build

    result = build(BuildOptions(model=Path("model.safetensors"), onnx_only=True, roi_align="onnx",
                                source_size=(480, 640)))        # (H, W)
    result.onnx_path, result.manifest_path, result.parity.passed

Steps (one progress stage each): export (:func:`build_engine.export.export_onnx`), ONNX check,
engine build (:mod:`build_engine.trt_build`, skipped with ``onnx_only``), parity against the
PyTorch model (:mod:`build_engine.parity_report`). The manifest (``<artifact>.manifest.json``)
records the machine, the build arguments, the I/O, the parity report and the build command in
its explicit form (:meth:`build_engine.options.BuildOptions.command`). ``build-engine``
(:mod:`build_engine.cli`) is this plus argument parsing and exit codes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from build_engine.manifest import build_manifest, write_manifest
from build_engine.options import BuildOptions
from build_engine.parity_report import ParityReport, artifact_parity, skipped_report
from build_engine.progress import Progress
from build_engine.trt_build import (
    EngineBuildError,
    EngineBuildOptions,
    build_engine_file,
    import_tensorrt,
)
from engines.machine import collect_runtime_environment
from engines.manifest import Manifest, RuntimeEnvironment
from engines.model.config import MaskRCNNConfig
from engines.model.preprocess import resized_size


class BuildFailure(RuntimeError):
    """A step failed (``build-engine`` exits with status 1); the message says which and why."""


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote: the graph, the engine (None with ``--onnx-only``) and the manifest."""

    onnx_path: Path
    engine_path: Path | None
    manifest_path: Path
    parity: ParityReport
    manifest: Manifest


def frame_and_input_size(cfg: MaskRCNNConfig, opts: BuildOptions) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(frame size, network input size)``, both ``(H, W)``.

    ``--source-size``: frames at the camera size, resized in the graph to
    ``resized_size(H, W, min_size, max_size)`` as the model's preprocessing does.
    ``--input-size``: frames arrive already at the network input size; the graph only
    normalizes and pads (the export sets the resize scale to exactly 1).
    """
    if opts.source_size is not None:
        return opts.source_size, resized_size(*opts.source_size, float(cfg.min_size), float(cfg.max_size))
    assert opts.input_size is not None
    return opts.input_size, opts.input_size


def output_paths(opts: BuildOptions, model_name: str, frame_hw: tuple[int, int]) -> tuple[Path, Path | None]:
    """``(onnx, engine)``: ``--out`` with its suffix replaced (``.onnx`` / ``.plan``), or a default name."""
    out = opts.out or Path(f"{model_name}_{frame_hw[0]}x{frame_hw[1]}_{opts.precision}"
                           + (".onnx" if opts.onnx_only else ".plan"))
    engine_suffixes = (".plan", ".engine", ".trt")
    base = out.with_suffix("") if out.suffix in (".onnx", *engine_suffixes) else out
    onnx_path = base.with_name(base.name + ".onnx")
    if opts.onnx_only:
        return onnx_path, None
    return onnx_path, out if out.suffix in engine_suffixes else base.with_name(base.name + ".plan")


def preflight(opts: BuildOptions) -> RuntimeEnvironment:
    """This machine; for an engine, refuse early when TensorRT or a GPU is missing."""
    env = collect_runtime_environment()
    if opts.onnx_only:
        return env
    try:
        import_tensorrt()
    except ImportError as exc:
        raise BuildFailure(str(exc)) from exc
    if env.compute_capability is None:
        raise BuildFailure("no CUDA GPU found: an engine is built on the GPU model it will run on; run build-engine "
                           "on the GPU box, or use --onnx-only to export the graph")
    return env


def _step_failed(step: str, exc: BaseException) -> BuildFailure:
    return BuildFailure(f"{step} failed: {exc}")


def build(opts: BuildOptions, progress: Progress | None = None) -> BuildResult:
    """Run every step of ``opts``; raise :class:`BuildFailure` on a failed step.

    ``progress`` reports each stage (default: :class:`Progress` over :func:`build_stages` on
    stderr). A failed parity gate is no exception: ``result.parity.passed`` is False and the
    files and the manifest are written all the same.
    """
    from engines.weights import ModelLoadError, demo_model_path, load_model

    progress = progress or Progress(build_stages(opts))
    env = preflight(opts)
    try:
        loaded = load_model(opts.model)
    except ModelLoadError as exc:
        raise BuildFailure(str(exc)) from exc
    cfg = loaded.model.cfg
    frame_hw, input_hw = frame_and_input_size(cfg, opts)
    onnx_path, engine_path = output_paths(opts, loaded.name, frame_hw)
    artifact = engine_path or onnx_path
    if opts.source_size is not None:
        progress.note(f"network input {input_hw[0]}x{input_hw[1]} (HxW) for {frame_hw[1]}x{frame_hw[0]} (WxH) source "
                      f"frames (model resize: min_size {cfg.min_size}, max_size {cfg.max_size})")

    with progress.stage("export"):
        from build_engine.export import export_onnx

        try:
            export_onnx(loaded.model, onnx_path, source_hw=opts.source_size, input_hw=opts.input_size,
                        roi_align=opts.roi_align, precision=opts.precision, class_names=loaded.class_names,
                        name=loaded.name)
        except (ValueError, RuntimeError, OSError) as exc:
            raise _step_failed("ONNX export", exc) from exc
    with progress.stage("ONNX check"):
        _check_onnx(onnx_path, progress, fatal=engine_path is not None)

    def manifest_of(parity: ParityReport | None) -> Manifest:
        m = build_manifest(
            onnx_path=onnx_path, weights_path=opts.model or demo_model_path(), precision=opts.precision,
            batch=opts.batch, input_size=input_hw, class_names=loaded.class_names,
            preprocessing={"mean": list(cfg.image_mean), "std": list(cfg.image_std), "min_size": cfg.min_size,
                           "max_size": cfg.max_size, "size_divisible": cfg.size_divisible, "input_format": "RGB",
                           "frame_size": list(frame_hw),
                           "source_size": list(opts.source_size) if opts.source_size else None},
            argv=opts.command(artifact), hardware_compatibility=opts.hardware_compatibility,
            version_compatible=opts.version_compatible, env=env)
        return m if parity is None else dataclasses.replace(m, parity=parity.as_dict())

    if engine_path is not None:
        with progress.stage("engine build"):
            _build_engine(opts, onnx_path, engine_path, env, progress)
        write_manifest(manifest_of(None), engine_path)  # the engine never lies around without its manifest
    with progress.stage("parity"):
        report = _parity(opts, loaded.name, onnx_path, engine_path, frame_hw, progress)
    if report.passed is False and opts.accept_parity_failure:
        report = dataclasses.replace(report, accepted=True)
    manifest = manifest_of(report)
    manifest_path = write_manifest(manifest, artifact)
    return BuildResult(onnx_path, engine_path, manifest_path, report, manifest)


def _check_onnx(onnx_path: Path, progress: Progress, fatal: bool) -> None:
    """ONNX checker (full inference; fatal), then ``onnx_check.tensorrt_problems`` (TensorRT's parser
    rules that can be checked offline): fatal before an engine build, a note with ``--onnx-only``."""
    import onnx

    from build_engine.onnx_check import check_onnx, tensorrt_problems

    model = onnx.load(str(onnx_path))
    try:
        check_onnx(model)
    except onnx.checker.ValidationError as exc:
        raise _step_failed("ONNX check", exc) from exc
    problems = tensorrt_problems(model)
    if problems and fatal:
        raise BuildFailure(f"ONNX check failed: TensorRT's parser would refuse {onnx_path}: {'; '.join(problems)}")
    if problems:
        progress.note(f"note: TensorRT may not import this graph as is: {'; '.join(problems)}")


def _build_engine(opts: BuildOptions, onnx_path: Path, engine_path: Path, env: RuntimeEnvironment,
                  progress: Progress) -> None:
    from build_engine.manifest import onnx_io_and_plugins

    inputs, _, plugins = onnx_io_and_plugins(onnx_path)
    bar = progress.counter("TensorRT")

    def on_phase(name: str, step: int, steps: int) -> None:
        bar.set_description(name[:40])
        bar.total = steps
        bar.n = step
        bar.refresh()

    assert env.compute_capability is not None
    build_opts = EngineBuildOptions(
        onnx_path=onnx_path, engine_path=engine_path, frames=inputs[0], batch=opts.batch,
        compute_capability=env.compute_capability, uses_plugin=bool(plugins),
        workspace_bytes=opts.workspace_mib * 2**20 if opts.workspace_mib else None,
        timing_cache=opts.timing_cache, hardware_compatibility=opts.hardware_compatibility,
        version_compatible=opts.version_compatible, driver_cuda_version=env.cuda_version)
    try:
        build_engine_file(build_opts, on_phase)
    except (ImportError, EngineBuildError, ValueError, RuntimeError) as exc:
        raise _step_failed("engine build", exc) from exc
    finally:
        bar.close()


def _parity(opts: BuildOptions, name: str, onnx_path: Path, engine_path: Path | None,
            frame_hw: tuple[int, int], progress: Progress) -> ParityReport:
    import torch

    device = "cuda" if engine_path is not None and torch.cuda.is_available() else "cpu"
    candidate = "tensorrt (cuda:0)" if engine_path is not None else "onnxruntime (cpu)"
    if opts.parity_frames <= 0:
        return skipped_report("--parity-frames 0", candidate, f"pytorch ({device})", opts.precision)
    if engine_path is None and opts.roi_align == "plugin":
        return skipped_report("ONNX Runtime cannot run the TensorRT RoIAlign plugin node; the engine built from this "
                              "graph gets its parity check when it is built", candidate, f"pytorch ({device})",
                              opts.precision)
    try:
        return artifact_parity(
            opts.model, engine_path or onnx_path, "tensorrt" if engine_path is not None else "onnxruntime",
            frame_hw, opts.precision, opts.parity_frames, min(max(opts.batch.opt, opts.batch.min), opts.batch.max),
            reference_device=device, identity_resize=opts.input_size is not None,
            wrap=lambda items, desc, total: progress.bar(items, desc, total))
    except (ImportError, ValueError, RuntimeError, OSError) as exc:
        raise _step_failed(f"parity ({name})", exc) from exc


def build_stages(opts: BuildOptions) -> list[str]:
    """The progress stages of a build with ``opts``, in order."""
    return ["export", "ONNX check", *([] if opts.onnx_only else ["engine build"]), "parity"]
