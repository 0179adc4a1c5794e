"""What this machine has for running engines: TensorRT, the CUDA device, its driver, the OS.

:func:`collect_runtime_environment` fills an :class:`engines.manifest.RuntimeEnvironment`; the
engine manifest check compares it with the one recorded at build time. Every probe is optional:
a missing ``nvidia-smi``, ``libcuda`` or ``tensorrt`` module leaves its field ``None``.
"""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess

from engines.manifest import RuntimeEnvironment


def parse_nvidia_smi(text: str) -> tuple[str, str | None, str] | None:
    """First row of ``nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader``."""
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0]:
            cc = parts[1] if parts[1] and parts[1][0].isdigit() else None
            return parts[0], cc, parts[2]
    return None


def _nvidia_smi(device: int) -> tuple[str, str | None, str] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    cmd = [exe, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader", "-i", str(device)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi(proc.stdout) if proc.returncode == 0 else None


def _driver_cuda_version() -> str | None:
    """CUDA version supported by the installed driver (cuDriverGetVersion), e.g. ``"13.0"``."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1" if platform.system() != "Windows" else "nvcuda.dll")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value <= 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def _tensorrt_version() -> str | None:
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return getattr(tensorrt, "__version__", None)


def collect_runtime_environment(device: int = 0) -> RuntimeEnvironment:
    """What this machine has: TensorRT (if importable), CUDA device ``device``, driver, OS."""
    import torch

    name: str | None = None
    cc: str | None = None
    smi = _nvidia_smi(device)
    if torch.cuda.is_available() and device < torch.cuda.device_count():
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        cc = f"{major}.{minor}"
    elif smi is not None:
        name, cc = smi[0], smi[1]
    return RuntimeEnvironment(
        tensorrt_version=_tensorrt_version(),
        gpu_name=name,
        compute_capability=cc,
        driver_version=smi[2] if smi else None,
        cuda_version=_driver_cuda_version(),
        os=platform.system().lower(),
    )
