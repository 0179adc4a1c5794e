"""Opening a model of any supported kind as a :class:`Runner`.

::

    runner = load_runner("model.onnx", device="cpu")     # backend chosen by file type
    runner = load_runner(None, device="cuda:1")          # the embedded demo model, PyTorch

The backend comes from ``backend`` or, when None, from the file's suffix
(:func:`engines.backends.backend_for`); :data:`engines.backends.RUNTIMES` names the module
that runs it, which is imported only then and opened with its ``open_runner``. Weights files
for the PyTorch runtime are read by :mod:`engines.weights`.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any, cast

from engines.backends import RUNTIMES, Runtime, UnknownBackendError, backend_for, check_backend
from engines.devices import Device, DeviceError, parse_device
from engines.runner import Runner, RunnerFactory
from engines.weights import ModelLoadError

__all__ = ["load_runner", "runner_factory"]


def _runtime(backend: str) -> Runtime:
    try:
        return RUNTIMES[check_backend(backend)]
    except UnknownBackendError as e:
        raise ModelLoadError(str(e)) from e


def runner_factory(backend: str) -> RunnerFactory:
    """The ``open_runner`` of ``backend``'s runtime module (imported now), or :class:`ModelLoadError`."""
    runtime = _runtime(backend)
    factory = getattr(import_module(runtime.module), "open_runner", None)
    if factory is None:
        raise ModelLoadError(f"runtime module {runtime.module} of backend {backend!r} defines no open_runner")
    return cast(RunnerFactory, factory)


def load_runner(path: str | Path | None, device: str | Device = "cpu", backend: str | None = None,
                paste_threshold: float | None = None, **overrides: Any) -> Runner:
    """Open ``path`` (None = demo model) on ``device`` with ``backend`` (default: by file type).

    ``paste_threshold``: on a CUDA device, the runner pastes each frame's masks on the GPU at
    this threshold and brings only the box-local masks to the host (``Detections.pasted``);
    on the CPU, pasting stays with the caller's postprocessing threads.

    Raises:
        ModelLoadError: an unknown backend or device, or the demo model asked of a runtime that
            takes files only; each runtime raises its own errors about the file itself
            (ValueError, OSError, RuntimeError, ImportError).
    """
    name = backend or backend_for(path)
    if path is None and not _runtime(name).opens_demo_model:
        raise ModelLoadError(f"the {name} backend needs a model file (.onnx or .engine from build-engine); "
                             "the embedded demo model is a PyTorch model file")
    try:
        dev = parse_device(device)
    except DeviceError as e:
        raise ModelLoadError(str(e)) from e
    return runner_factory(name)(path, dev, paste_threshold if dev.is_cuda else None, **overrides)
