"""Runtime backends: their names, the files that imply each, and the module that runs each.

Standard library only: configuration checks and command lines validate a backend without
importing torch, onnxruntime or TensorRT.

===============  ========================  ===========================================  ==========
backend          runtime module            files it takes by default                    demo model
===============  ========================  ===========================================  ==========
``pytorch``      ``engines.torch_runner``  ``*.safetensors``, ``*.pth/.pt/.ckpt/.bin``  yes
                                           and any other suffix
``onnxruntime``  ``engines.ort_runner``    ``*.onnx`` (portable graph, build-engine)    no
``tensorrt``     ``engines.trt_runner``    ``*.engine``, ``*.plan``, ``*.trt``          no
===============  ========================  ===========================================  ==========

Each runtime module defines ``open_runner`` (:class:`engines.runner.RunnerFactory`);
:func:`engines.loading.load_runner` imports the chosen backend's module only. Adding a
runtime: a module with ``open_runner``, its name in :data:`Backend` and its entry in
:data:`RUNTIMES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

Backend = Literal["pytorch", "onnxruntime", "tensorrt"]
"""A runtime's name, as ``--backend`` and ``[inference] backend`` take it."""

BACKENDS: tuple[Backend, ...] = get_args(Backend)

DEFAULT_BACKEND: Backend = "pytorch"
"""The backend of the embedded demo model and of files no runtime claims by suffix."""


@dataclass(frozen=True)
class Runtime:
    """Where a backend's runner comes from."""

    module: str
    """Module defining ``open_runner`` (imported only when the backend is used)."""
    suffixes: tuple[str, ...] = ()
    """Lower-case file suffixes that select this backend when none is named."""
    opens_demo_model: bool = False
    """Whether ``path=None`` (the embedded demo model, a PyTorch model file) can run here."""


RUNTIMES: dict[Backend, Runtime] = {
    "pytorch": Runtime("engines.torch_runner", opens_demo_model=True),
    "onnxruntime": Runtime("engines.ort_runner", suffixes=(".onnx",)),
    "tensorrt": Runtime("engines.trt_runner", suffixes=(".engine", ".plan", ".trt")),
}


class UnknownBackendError(ValueError):
    """A backend name outside :data:`BACKENDS`; the message lists the known ones."""


def check_backend(name: str) -> Backend:
    """``name`` as a :data:`Backend`, or :class:`UnknownBackendError` listing the known backends."""
    for backend in BACKENDS:
        if name == backend:
            return backend
    raise UnknownBackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def backend_for(path: str | Path | None) -> Backend:
    """The backend a file implies by its suffix (case-insensitive); None (the demo model) → pytorch."""
    if path is None:
        return DEFAULT_BACKEND
    suffix = Path(path).suffix.lower()
    for backend, runtime in RUNTIMES.items():
        if suffix in runtime.suffixes:
            return backend
    return DEFAULT_BACKEND
