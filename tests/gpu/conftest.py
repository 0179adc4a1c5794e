"""Requirements of the ``gpu`` tests, as fixtures that skip with the reason when one is missing.

``cuda_capability``: a CUDA GPU that torch sees; the others build on it. ``tensorrt``: TensorRT
>= 10.9 with its libraries; ``cupy``: cupy for launching PTX; ``ptx_compiler``: nvcc or NVRTC no
newer than the driver's CUDA. The model, frame size and frame count of the engine checks come
from the ``--gpu-*`` options (tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from build_engine.ptx import Compiler


@pytest.fixture(scope="session")
def cuda_capability() -> tuple[int, int]:
    """Compute capability of CUDA device 0; skips where torch sees no CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip(f"needs a CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, "
                    f"built for CUDA {torch.version.cuda})")
    major, minor = torch.cuda.get_device_capability(0)
    return major, minor


@pytest.fixture(scope="session")
def driver_cuda(cuda_capability: tuple[int, int]) -> str | None:
    """Highest CUDA version the driver supports (``"13.0"``), None where it cannot be read."""
    from engines.machine import collect_runtime_environment

    return collect_runtime_environment().cuda_version


@pytest.fixture(scope="session")
def tensorrt(cuda_capability: tuple[int, int]) -> ModuleType:
    """The ``tensorrt`` module; skips where it (or its libnvinfer) does not load."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        pytest.skip(f"needs TensorRT >= 10.9 with its libraries (pip install tensorrt): import tensorrt failed: {exc}")
    return tensorrt


@pytest.fixture(scope="session")
def cupy(cuda_capability: tuple[int, int]) -> ModuleType:
    """The ``cupy`` module (launches the kernel's PTX without TensorRT); skips where it does not load."""
    try:
        import cupy
    except (ImportError, OSError) as exc:
        pytest.skip(f"needs cupy to launch the kernel (pip install cupy-cuda12x or cupy-cuda13x): {exc}")
    return cupy


@pytest.fixture(scope="session")
def ptx_compiler(driver_cuda: str | None) -> Compiler:
    """The PTX compiler the build would choose for this driver; skips where none is usable."""
    from build_engine.ptx import find_compiler

    try:
        return find_compiler(max_cuda=driver_cuda)
    except RuntimeError as exc:
        pytest.skip(f"needs a PTX compiler (nvcc, or cuda-python's NVRTC) for this driver: {exc}")


@pytest.fixture(scope="session")
def gpu_model(pytestconfig: pytest.Config) -> Path | None:
    """``--gpu-model``, or None for the embedded demo model (which must exist: a shipped asset)."""
    from engines.weights import demo_model_path

    chosen: Path | None = pytestconfig.getoption("gpu_model")
    if chosen is not None:
        if not chosen.is_file():
            pytest.fail(f"--gpu-model {chosen}: no such file")
        return chosen
    demo = demo_model_path()
    if not demo.is_file():
        pytest.fail(f"the shipped demo model {demo} is missing: restore it from git "
                    f"(git checkout HEAD -- engines/assets/{demo.name})")
    return None


@pytest.fixture(scope="session")
def gpu_source_size(pytestconfig: pytest.Config) -> tuple[int, int]:
    """``--gpu-source-size`` as ``(width, height)``."""
    text: str = pytestconfig.getoption("gpu_source_size")
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise pytest.UsageError(f"--gpu-source-size must be WxH (e.g. 320x240), got {text!r}")
    return int(width), int(height)


@pytest.fixture(scope="session")
def gpu_frames(pytestconfig: pytest.Config, gpu_source_size: tuple[int, int],
               tmp_path_factory: pytest.TempPathFactory) -> tuple[list[np.ndarray], Path]:
    """``--gpu-parity-frames`` parity frames ``uint8[H, W, 3]`` at ``--gpu-source-size``, and an .npy file of them."""
    from build_engine.parity_report import parity_frames

    width, height = gpu_source_size
    frames = [f for _, f in parity_frames(pytestconfig.getoption("gpu_parity_frames"), height, width)]
    path = tmp_path_factory.mktemp("gpu-frames") / "frames.npy"
    np.save(path, np.stack(frames))
    return frames, path
