"""TensorRT runner: manifest checks on recorded manifests, locking and close semantics with a stand-in
engine session here; the engine itself on the GPU box (``tests/gpu/test_trt_engines.py``, ``-m gpu``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from engines.machine import collect_runtime_environment
from engines.manifest import (
    EngineIncompatibleError,
    Manifest,
    Requirements,
    manifest_path_for,
    read_manifest,
)
from engines.static_io import GraphInfo, GraphMetadataError
from engines.trt_runner import TrtRunner, batch_plan, cuda_index, graph_info, torch_dtype

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
    assert [cuda_index(d) for d in ("cuda", "cuda:0", "cuda:3")] == [0, 0, 3]
    with pytest.raises(ValueError, match=r"^device must be 'cpu', 'cuda' or 'cuda:N' \(N >= 0\), got 'gpu'$"):
        TrtRunner(tmp_path / "model.plan", device="gpu")


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


def test_torch_buffers_take_the_engine_tensor_dtypes() -> None:
    expected = {np.uint8: torch.uint8, np.int32: torch.int32, np.int64: torch.int64, np.float32: torch.float32,
                np.float16: torch.float16, np.bool_: torch.bool}
    assert {k: torch_dtype(k) for k in expected} == expected


def test_no_pycuda_and_no_cuda_graphs() -> None:
    import inspect

    import engines.trt_runner as module

    source = inspect.getsource(module)
    assert "import pycuda" not in source and "CUDAGraph" not in source
    assert "cuda_graph" not in inspect.signature(TrtRunner).parameters
    assert not hasattr(TrtRunner, "paste_on_gpu")
    code = "import sys, engines.trt_runner; print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'pycuda')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", "importing the runner imports neither TensorRT nor pycuda"


# --------------------------------------------------------------------------- locking and close, stand-in session
SMALL = dataclasses.replace(GRAPH, frame_size=(8, 12), network_size=(8, 12))


class FakeSession:
    """Stands in for the engine session: records the threads that ran and released it; can block a run."""

    batch_min, batch_max = 1, 2

    def __init__(self) -> None:
        self.running = threading.Event()
        self.proceed = threading.Event()
        self.proceed.set()
        self.runs: list[tuple[int, int]] = []
        self.released: list[str] = []

    def run(self, frames: npt.NDArray[np.uint8], batch: int) -> dict[str, npt.NDArray[Any]]:
        self.running.set()
        assert self.proceed.wait(30)
        self.runs.append((len(frames), batch))
        n = len(frames)
        return {"counts": np.zeros(n, np.int32), "boxes": np.zeros((n, 100, 4), np.float32),
                "scores": np.zeros((n, 100), np.float32), "labels": np.zeros((n, 100), np.int32),
                "mask_probs": np.zeros((n, 100, 28, 28), np.float32)}

    def release(self) -> None:
        self.released.append(threading.current_thread().name)


def _runner(session: FakeSession) -> TrtRunner:
    """A runner around ``session``, built without TensorRT (the manifest path is covered above)."""
    runner = TrtRunner.__new__(TrtRunner)
    runner._lock = threading.Lock()
    runner._session = session  # type: ignore[assignment]
    runner.path, runner.graph, runner.frame_hw = Path("fake.plan"), SMALL, SMALL.frame_size
    return runner


def _frames(n: int) -> list[npt.NDArray[np.uint8]]:
    return [np.zeros((*SMALL.frame_size, 3), np.uint8) for _ in range(n)]


def test_infer_splits_batches_over_the_profile() -> None:
    session = FakeSession()
    dets = _runner(session).infer(_frames(5))
    assert len(dets) == 5 and session.runs == [(2, 2), (2, 2), (1, 1)]


def test_close_from_another_thread_waits_for_the_running_batch() -> None:
    session = FakeSession()
    runner = _runner(session)
    session.proceed.clear()
    worker = threading.Thread(target=runner.infer, args=(_frames(2),), name="inference")
    worker.start()
    assert session.running.wait(30)
    closer = threading.Thread(target=runner.close, name="loop")
    closer.start()
    closer.join(0.3)
    assert closer.is_alive() and session.released == [], "close must not free buffers under a running batch"
    session.proceed.set()
    worker.join(30)
    closer.join(30)
    assert session.released == ["loop"] and runner.closed


def test_close_is_idempotent_and_infer_after_close_is_refused() -> None:
    session = FakeSession()
    runner = _runner(session)
    runner.close()
    runner.close()
    other = threading.Thread(target=runner.close)
    other.start()
    other.join(30)
    assert session.released == ["MainThread"]
    with pytest.raises(RuntimeError, match=r"fake\.plan is closed"):
        runner.infer(_frames(1))


# --------------------------------------------------------------------------- the real engine (GPU box)
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT libraries (libnvinfer) not installed")
def test_engine_runs_on_another_thread_and_matches_pytorch(tiny_model_path: Path, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from build_engine.cli import main
    from build_engine.parity_report import parity_frames
    from engines.loading import load_runner

    engine = tmp_path / "tiny.plan"
    assert main(["--model", str(tiny_model_path), "--source-size", "160x120", "--batch", "1:2:4",
                 "--parity-frames", "0", "--out", str(engine)]) == 0
    runner = TrtRunner(engine)
    frames = [f for _, f in parity_frames(5, 120, 160)]
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(dets=runner.infer(frames)))  # 5 frames: runs of 4 and 1
    worker.start()
    worker.join(300)
    reference = load_runner(tiny_model_path, device="cuda").infer(frames)
    assert [len(d) for d in result["dets"]] == [len(d) for d in reference]
    closer = threading.Thread(target=runner.close)
    closer.start()
    closer.join(60)
    runner.close()
