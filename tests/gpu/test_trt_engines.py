"""``build-engine`` on this GPU, fp32 and fp16, then each engine as a deployment loads it.

Build: batch profile 1:2:4 at ``--gpu-source-size``, the fused RoIAlign plugin, the parity gate
against the PyTorch runner on ``--gpu-parity-frames`` frames; exit 0 means the gate passed.
Load (:mod:`tests.gpu.engine_load_check`, a fresh process that imports neither ``build_engine``
nor ``tensorrt.plugin``): loaded on the main thread, run twice on other threads with equal
outputs, closed on a third; its layers (plugin layers, fp16 layers) and its agreement with the
PyTorch CUDA runner are recorded as properties (``--junitxml``) and printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from build_engine.ptx import Compiler
from engines.manifest import manifest_path_for

RecordProperty = Callable[[str, object], None]
"""Type of pytest's ``record_property`` fixture."""

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BuiltEngine:
    precision: str
    path: Path
    command: list[str]
    exit: int
    seconds: float
    log: str
    """The build's output, last 4000 characters."""


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def built_engine(request: pytest.FixtureRequest, tensorrt: ModuleType, ptx_compiler: Compiler,
                 gpu_model: Path | None, gpu_source_size: tuple[int, int],
                 tmp_path_factory: pytest.TempPathFactory) -> BuiltEngine:
    """One ``build-engine`` run per precision (in a process of its own)."""
    precision: str = request.param
    width, height = gpu_source_size
    engine = tmp_path_factory.mktemp(f"engine-{precision}") / f"engine_{precision}.plan"
    cmd = [sys.executable, "-m", "build_engine.cli", "--source-size", f"{width}x{height}", "--batch", "1:2:4",
           "--precision", precision, "--parity-frames", str(request.config.getoption("gpu_parity_frames")),
           "--out", str(engine)]
    if gpu_model is not None:
        cmd += ["--model", str(gpu_model)]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
    return BuiltEngine(precision, engine, cmd, proc.returncode, round(time.monotonic() - started, 1),
                       (proc.stdout + proc.stderr)[-4000:])


def test_engine_builds_through_the_parity_gate(built_engine: BuiltEngine,
                                               record_property: RecordProperty) -> None:
    record_property("build_seconds", built_engine.seconds)
    assert built_engine.exit == 0, f"{' '.join(built_engine.command)}\n{built_engine.log}"
    manifest = json.loads(manifest_path_for(built_engine.path).read_text())
    parity: dict[str, Any] = manifest["parity"]
    record_property("parity", parity["total"])
    assert (parity["verdict"], parity["accepted"], parity["precision"]) == ("PASS", False, built_engine.precision)
    assert [p["name"] for p in manifest["build"]["plugins"]] == ["MultilevelRoIAlign"], manifest["build"]


def test_engine_runs_in_a_fresh_process_across_threads(built_engine: BuiltEngine, gpu_model: Path | None,
                                                       gpu_frames: tuple[list[np.ndarray], Path], tmp_path: Path,
                                                       record_property: RecordProperty) -> None:
    if built_engine.exit != 0:
        pytest.fail(f"no {built_engine.precision} engine: the build failed (test_engine_builds_through_the_parity_gate)")
    out = tmp_path / "load.json"
    cmd = [sys.executable, "-m", "tests.gpu.engine_load_check", str(built_engine.path), str(gpu_frames[1]), str(out)]
    if gpu_model is not None:
        cmd += ["--model", str(gpu_model)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    log = (proc.stdout + proc.stderr)[-4000:]
    assert out.is_file(), f"exit {proc.returncode}, no report:\n{log}"
    report = json.loads(out.read_text())
    for key in ("layers", "vs_pytorch_cuda"):
        record_property(key, report.get(key))
    print(f"{built_engine.precision}: layers {report['layers']}; vs PyTorch CUDA: {report.get('vs_pytorch_cuda')}")
    assert report["forbidden_modules"] == [], "loading an engine imported the build step or the plugin's Python"
    assert report["complete"] and report["repeat_equal"], report
    assert report["closed"], "close() from another thread left the runner open"
    assert report["ok"] and proc.returncode == 0, log
