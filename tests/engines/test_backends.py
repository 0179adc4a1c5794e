"""The runtime registry: backend names, choice by file type, and load_runner's lookup."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from engines.backends import (
    BACKENDS,
    RUNTIMES,
    Runtime,
    UnknownBackendError,
    backend_for,
    check_backend,
)
from engines.devices import Device
from engines.loading import load_runner, runner_factory
from engines.torch_runner import torch_device
from engines.weights import ModelLoadError

UNKNOWN = "unknown backend 'tflite'; choose one of pytorch, onnxruntime, tensorrt"


def test_every_backend_has_a_runtime_module_with_open_runner() -> None:
    assert BACKENDS == ("pytorch", "onnxruntime", "tensorrt")
    assert tuple(RUNTIMES) == BACKENDS
    for backend, runtime in RUNTIMES.items():
        assert callable(importlib.import_module(runtime.module).open_runner), backend
    assert [b for b, r in RUNTIMES.items() if r.opens_demo_model] == ["pytorch"]


@pytest.mark.parametrize(("path", "backend"), [
    (None, "pytorch"), ("m.safetensors", "pytorch"), ("m.pth", "pytorch"), ("m.pt", "pytorch"),
    ("m.ckpt", "pytorch"), ("m.bin", "pytorch"), ("m", "pytorch"), ("m.onnx", "onnxruntime"),
    ("m.ONNX", "onnxruntime"), ("m.engine", "tensorrt"), ("m.plan", "tensorrt"), ("dir/m.trt", "tensorrt"),
    (Path("m.Plan"), "tensorrt"),
])
def test_backend_by_file_type(path: str | None, backend: str) -> None:
    assert backend_for(path) == backend


def test_unknown_backend_lists_the_known_ones() -> None:
    assert [check_backend(b) for b in BACKENDS] == list(BACKENDS)
    with pytest.raises(UnknownBackendError, match=f"^{UNKNOWN}$"):
        check_backend("tflite")
    with pytest.raises(ModelLoadError, match=f"^{UNKNOWN}$"):
        load_runner("m.onnx", backend="tflite")
    with pytest.raises(ModelLoadError, match=f"^{UNKNOWN}$"):
        runner_factory("tflite")


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_demo_model_needs_the_pytorch_backend(backend: str) -> None:
    with pytest.raises(ModelLoadError, match=f"the {backend} backend needs a model file .* PyTorch model file"):
        load_runner(None, backend=backend)


def test_bad_device_is_refused_before_loading(tmp_path: Path) -> None:
    for backend in BACKENDS:
        with pytest.raises(ModelLoadError, match=r"^device must be 'cpu', 'cuda' or 'cuda:N' \(N >= 0\), got 'gpu'$"):
            load_runner(tmp_path / "missing", device="gpu", backend=backend)


def test_torch_device() -> None:
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device(Device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1' requested but CUDA is not available"):
            torch_device("cuda:1")


def _fake_runtime(monkeypatch: pytest.MonkeyPatch, calls: list[tuple[Any, ...]]) -> None:
    module = types.ModuleType("fake_runtime")

    def open_runner(path: str | Path | None, device: Device, paste_threshold: float | None = None,
                    **overrides: Any) -> Any:
        calls.append((path, device, paste_threshold, overrides))
        return "runner"

    module.open_runner = open_runner  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_runtime", module)
    monkeypatch.setitem(RUNTIMES, "tensorrt", Runtime("fake_runtime", suffixes=(".fake",)))


def test_load_runner_calls_the_registered_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    _fake_runtime(monkeypatch, calls)
    assert load_runner("m.fake", device="cuda:01", paste_threshold=0.5, score=1) == "runner"
    assert load_runner("m.fake", device="cpu", paste_threshold=0.5) == "runner"
    assert load_runner("m.onnx", device=Device("cuda"), backend="tensorrt") == "runner"
    assert calls == [("m.fake", Device("cuda", 1), 0.5, {"score": 1}),  # paste on the device: CUDA only
                     ("m.fake", Device("cpu"), None, {}),
                     ("m.onnx", Device("cuda"), None, {})]


def test_runtime_module_without_open_runner_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "empty_runtime", types.ModuleType("empty_runtime"))
    monkeypatch.setitem(RUNTIMES, "onnxruntime", Runtime("empty_runtime"))
    with pytest.raises(ModelLoadError, match="runtime module empty_runtime of backend 'onnxruntime' defines no open_runner"):
        load_runner("m.onnx", backend="onnxruntime")


def _imported(statement: str) -> list[str]:
    code = (f"import sys; {statement}; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'numpy', 'onnxruntime', 'onnx', 'tensorrt') or m.endswith('_runner')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    return [m for m in out.stdout.strip().strip("[]").replace("'", "").split(", ") if m]


def test_registry_and_interface_import_no_runtime() -> None:
    assert _imported("import engines.backends, engines.devices") == []
    assert not [m for m in _imported("import engines.runner") if m.split(".")[0] != "numpy"]
    loading = _imported("import engines.loading")
    assert not [m for m in loading if m.split(".")[0] in ("onnxruntime", "onnx", "tensorrt") or m.endswith("_runner")]
