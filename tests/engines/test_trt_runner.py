"""TensorRT runner and engine cache: manifest checks on recorded manifests here, the engine on the GPU box."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import shlex
from pathlib import Path

import pytest

from engines.engine_cache import (
    EngineCacheMiss,
    EngineRequest,
    request_mismatches,
    resolve_engine,
)
from engines.machine import collect_runtime_environment
from engines.manifest import (
    BatchProfile,
    EngineIncompatibleError,
    Manifest,
    Requirements,
    RuntimeEnvironment,
    TensorSpec,
    cache_key,
    manifest_path_for,
    read_manifest,
)
from engines.static_io import GraphInfo, GraphMetadataError
from engines.trt_runner import TrtRunner, batch_plan, graph_info, parse_cuda_device

FIXTURES = Path(__file__).parent / "fixtures"
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
GRAPH = GraphInfo(name="r50", class_names=("__background__", "person", "bicycle", "car"), frame_size=(800, 1344),
                  input_mode="input", network_size=(800, 1344), precision="fp16", roi_align="plugin")


@pytest.fixture
def a5000() -> Manifest:
    return dataclasses.replace(read_manifest(FIXTURES / "a5000_trt10.9_fp16.manifest.json"),
                               graph=GRAPH.to_metadata())


def _engine(tmp_path: Path, manifest: Manifest) -> Path:
    """An engine file that TensorRT could not load (so a refusal must come from the manifest) + its manifest."""
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"not a TensorRT engine")
    manifest_path_for(engine).write_text(manifest.to_json())
    return engine


# --------------------------------------------------------------------------- runner: refusal before loading
def test_engine_from_another_machine_is_refused_with_the_rebuild_command(tmp_path: Path, a5000: Manifest) -> None:
    engine = _engine(tmp_path, a5000)
    here = collect_runtime_environment()

    with pytest.raises(EngineIncompatibleError) as info:
        TrtRunner(engine)  # the bytes are garbage: only the manifest check can have refused it

    fields = {m.field for m in info.value.mismatches}
    assert ("environment.tensorrt_version" in fields) == (here.tensorrt_version != "10.9.0.34")
    assert ("environment.compute_capability" in fields) == (here.compute_capability != "8.6")
    msg = str(info.value)
    assert str(engine) in msg and "Rebuild it on this machine with:" in msg
    assert shlex.join(a5000.build_command) in msg


def test_machine_without_tensorrt_or_gpu_is_told_so(tmp_path: Path, a5000: Manifest) -> None:
    here = collect_runtime_environment()
    if here.tensorrt_version is not None and here.compute_capability is not None:
        pytest.skip("this machine has TensorRT and a GPU")
    with pytest.raises(EngineIncompatibleError) as info:
        TrtRunner(_engine(tmp_path, a5000))
    assert ("no TensorRT" in str(info.value)) == (here.tensorrt_version is None)
    assert ("no CUDA GPU" in str(info.value)) == (here.compute_capability is None)


def test_callers_needs_are_checked_too(tmp_path: Path, a5000: Manifest) -> None:
    with pytest.raises(EngineIncompatibleError) as info:
        TrtRunner(_engine(tmp_path, a5000), requirements=Requirements(batch_size=16))
    assert "build.batch" in {m.field for m in info.value.mismatches}
    assert "--max-batch 16" in str(info.value)


def test_engine_without_manifest_is_refused(tmp_path: Path) -> None:
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="rebuild with build-engine"):
        TrtRunner(engine)


def test_cpu_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a CUDA device"):
        TrtRunner(tmp_path / "model.plan", device="cpu")
    assert [parse_cuda_device(d) for d in ("cuda", "cuda:0", "cuda:3")] == [0, 0, 3]


def test_graph_description_comes_from_the_manifest(a5000: Manifest) -> None:
    assert graph_info(a5000) == GRAPH
    with pytest.raises(GraphMetadataError, match="rebuild the engine"):
        graph_info(dataclasses.replace(a5000, graph=None))


@pytest.mark.parametrize(("n", "lo", "hi", "plan"), [
    (0, 1, 8, []),
    (3, 1, 8, [(3, 3)]),
    (8, 1, 8, [(8, 8)]),
    (19, 1, 8, [(8, 8), (8, 8), (3, 3)]),
    (5, 4, 4, [(4, 4), (1, 4)]),  # a short run is padded up to the profile's minimum
])
def test_batch_plan(n: int, lo: int, hi: int, plan: list[tuple[int, int]]) -> None:
    assert batch_plan(n, lo, hi) == plan


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT libraries (libnvinfer) not installed")
def test_engine_runs_and_matches_pytorch_on_the_gpu(tiny_model_path: Path, tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from build_engine.cli import main
    from build_engine.parity_report import parity_frames
    from engines.loading import load_runner

    engine = tmp_path / "tiny.plan"
    assert main(["--model", str(tiny_model_path), "--source-size", "160x120", "--batch", "1:2:4",
                 "--parity-frames", "0", "--out", str(engine)]) == 0
    runner = TrtRunner(engine, cuda_graph=False)
    frames = [f for _, f in parity_frames(5, 120, 160)]
    dets = runner.infer(frames)  # 5 frames: runs of 4 and 1
    reference = load_runner(tiny_model_path, device="cuda").infer(frames)
    assert [len(d) for d in dets] == [len(d) for d in reference]
    for d in dets:
        assert (runner.paste_on_gpu(d) == d.paste()).all()
    runner.close()
    graphed = TrtRunner(engine, cuda_graph=True)
    for _ in range(2):  # capture, then replay
        again = graphed.infer(frames)
        assert all((a.boxes == d.boxes).all() and (a.scores == d.scores).all() for a, d in zip(again, dets, strict=True))
    graphed.close()


# --------------------------------------------------------------------------- engine cache
@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights of a model" * 100)
    return path


class Builder:
    """Stands in for build_engine.cli.build_for_cache where TensorRT cannot run: writes a placeholder
    engine and a real manifest for the request on the machine ``env``."""

    def __init__(self, template: Manifest, env: RuntimeEnvironment) -> None:
        self.template, self.env, self.calls = template, env, 0

    def __call__(self, model_path: Path | None, engine_path: Path, request: EngineRequest) -> Path:
        self.calls += 1
        assert model_path is not None
        b = self.template.build
        manifest = dataclasses.replace(
            self.template, environment=self.env,
            build=dataclasses.replace(b, precision=request.precision, batch=request.batch,
                                      weights_sha256=hashlib.sha256(model_path.read_bytes()).hexdigest()),
            inputs=(TensorSpec("frames", "uint8", (-1, *request.frame_size, 3)),),
            build_command=("build-engine", "--model", str(model_path), "--out", str(engine_path)))
        engine_path.write_bytes(b"placeholder engine")
        manifest_path_for(engine_path).write_text(manifest.to_json())
        return engine_path


REQUEST = EngineRequest(precision="fp16", batch=BatchProfile(1, 4, 8), source_size=(1080, 1920))


def test_cache_builds_once_then_reuses(tmp_path: Path, model: Path, a5000: Manifest) -> None:
    build = Builder(a5000, a5000.environment)
    cache = tmp_path / "cache"

    first = resolve_engine(model, cache, REQUEST, rebuild=True, build=build, env=a5000.environment)
    again = resolve_engine(model, cache, REQUEST, rebuild=False, env=a5000.environment)

    manifest = read_manifest(manifest_path_for(first))
    assert first == again == cache / f"model-{cache_key(manifest)}.plan" and build.calls == 1
    assert manifest.build_command[-1] == str(first)  # the recorded command rebuilds into the cache entry
    assert sorted(p.name for p in cache.iterdir()) == [".build.lock", first.name, manifest_path_for(first).name]


def test_other_needs_or_another_machine_build_another_engine(tmp_path: Path, model: Path, a5000: Manifest) -> None:
    build = Builder(a5000, a5000.environment)
    cache = tmp_path / "cache"
    fp16 = resolve_engine(model, cache, REQUEST, rebuild=True, build=build, env=a5000.environment)
    fp32 = resolve_engine(model, cache, dataclasses.replace(REQUEST, precision="fp32"), rebuild=True, build=build,
                          env=a5000.environment)
    newer = dataclasses.replace(a5000.environment, tensorrt_version="10.13.3.9")
    upgraded = resolve_engine(model, cache, REQUEST, rebuild=True, build=Builder(a5000, newer), env=newer)

    assert len({fp16, fp32, upgraded}) == 3 and build.calls == 2


def test_cache_miss_without_rebuild_says_why(tmp_path: Path, model: Path, a5000: Manifest) -> None:
    cache = tmp_path / "cache"
    resolve_engine(model, cache, REQUEST, rebuild=True, build=Builder(a5000, a5000.environment), env=a5000.environment)

    with pytest.raises(EngineCacheMiss) as info:
        resolve_engine(model, cache, dataclasses.replace(REQUEST, batch=BatchProfile(1, 8, 16)), rebuild=False,
                       env=dataclasses.replace(a5000.environment, compute_capability="8.9"))
    msg = str(info.value)
    assert "batch 1..8, need 1..16" in msg and "environment.compute_capability: engine has 8.6, here 8.9" in msg
    assert "build-engine" in msg


def test_renamed_engine_is_not_trusted(tmp_path: Path, model: Path, a5000: Manifest) -> None:
    cache = tmp_path / "cache"
    built = resolve_engine(model, cache, REQUEST, rebuild=True, build=Builder(a5000, a5000.environment),
                           env=a5000.environment)
    renamed = cache / "model-0000000000000000.plan"
    built.rename(renamed)
    manifest_path_for(built).rename(manifest_path_for(renamed))

    with pytest.raises(EngineCacheMiss, match="no engines there"):
        resolve_engine(model, cache, REQUEST, rebuild=False, env=a5000.environment)


def test_request_mismatches(a5000: Manifest) -> None:
    sha = a5000.build.weights_sha256
    served = dataclasses.replace(a5000, inputs=(TensorSpec("frames", "uint8", (-1, 800, 1344, 3)),))
    request = EngineRequest(precision="fp16", batch=BatchProfile(1, 2, 4), input_size=(800, 1344))

    assert request_mismatches(served, request, sha) == []
    assert request_mismatches(served, request, "0" * 64) == ["built from other weights"]
    assert request_mismatches(served, dataclasses.replace(request, roi_align="onnx"), sha) == [
        "RoIAlign plugin, need onnx"]
    failed = dataclasses.replace(served, parity={"passed": False})
    assert request_mismatches(failed, request, sha) == ["its parity check against PyTorch failed"]
    with pytest.raises(ValueError, match="exactly one of source_size"):
        EngineRequest(source_size=(1080, 1920), input_size=(800, 1344))
