"""PTX of ``roi_align.cu`` for one compute capability, with the op's parameters baked in.

TensorRT AOT plugins ship PTX inside the engine; the driver JIT-compiles it for the GPU
at load time. Compilers, in order of preference: ``nvcc -ptx`` (CUDA toolkit on PATH or
in ``$CUDA_HOME/bin``), then NVRTC through cuda-python (``pip install cuda-python``).
pycuda is not a third option: its compiler shells out to nvcc::

    ptx = compile_ptx(RoIAlignParams(), (8, 6))
    assert set(ENTRY_POINTS.values()) <= set(ptx_entries(ptx))

The PTX ISA version follows the compiler (CUDA 13 emits ISA 9.x): the driver that loads
the engine must support at least that CUDA version.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

from build_engine.plugin_spec import KERNEL_SOURCE, kernel_macros
from engines.roi_align import RoIAlignParams

Backend = Literal["auto", "nvcc", "nvrtc"]

_ENTRY = re.compile(r"^\s*(?:\.visible\s+)?\.entry\s+([A-Za-z_][A-Za-z0-9_$]*)\s*\(", re.MULTILINE)
_CC = re.compile(r"^(?:sm_|compute_)?(\d+)(?:\.(\d+))?$")


def parse_compute_capability(value: str | tuple[int, int]) -> tuple[int, int]:
    """``(8, 6)``, ``"8.6"``, ``"86"``, ``"sm_86"`` or ``"compute_86"`` → ``(8, 6)``."""
    if isinstance(value, tuple):
        major, minor = value
    else:
        m = _CC.match(value.strip())
        if m is None:
            raise ValueError(f"compute capability must look like '8.6', '86' or 'sm_86', got {value!r}")
        if m.group(2) is not None:
            major, minor = int(m.group(1)), int(m.group(2))
        else:
            digits = m.group(1)
            if len(digits) < 2:
                raise ValueError(f"compute capability needs major and minor digits, got {value!r}")
            major, minor = int(digits[:-1]), int(digits[-1])
    if major < 5 or not 0 <= minor <= 9:
        raise ValueError(f"compute capability must be >= 5.0 with minor 0..9, got {major}.{minor}")
    return major, minor


def find_nvcc() -> str | None:
    """``nvcc`` on PATH, else ``$CUDA_HOME/bin/nvcc``, else None."""
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidate = Path(home, "bin", "nvcc") if home else None
    return str(candidate) if candidate and candidate.is_file() else None


def _load_nvrtc() -> Any | None:
    """cuda-python's NVRTC module (``cuda.bindings.nvrtc`` since 12.6, ``cuda.nvrtc`` before)."""
    for module in ("cuda.bindings.nvrtc", "cuda.nvrtc"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    return None


def nvrtc_available() -> bool:
    return _load_nvrtc() is not None


def ptx_entries(ptx: str) -> list[str]:
    """Names of the kernel entry points (``.entry``) defined in ``ptx``."""
    return _ENTRY.findall(ptx)


def compile_ptx(
    params: RoIAlignParams, compute_capability: str | tuple[int, int], backend: Backend = "auto"
) -> str:
    """PTX text of ``roi_align.cu`` (both entry points) for ``compute_capability``.

    Raises:
        RuntimeError: no compiler for ``backend``, or compilation failed (log included).
        ValueError: bad compute capability or parameters the kernel cannot take.
    """
    major, minor = parse_compute_capability(compute_capability)
    macros = tuple(sorted(kernel_macros(params).items()))
    return _compile_cached(macros, f"compute_{major}{minor}", backend)


@functools.lru_cache(maxsize=32)
def _compile_cached(macros: tuple[tuple[str, str], ...], arch: str, backend: Backend) -> str:
    flags = [f"-D{k}={v}" for k, v in macros]
    nvcc = find_nvcc() if backend in ("auto", "nvcc") else None
    if nvcc is not None:
        return _compile_nvcc(nvcc, flags, arch)
    if backend in ("auto", "nvrtc"):
        nvrtc = _load_nvrtc()
        if nvrtc is not None:
            return _compile_nvrtc(nvrtc, flags, arch)
    wanted = {"auto": "nvcc or NVRTC", "nvcc": "nvcc", "nvrtc": "NVRTC"}[backend]
    raise RuntimeError(
        f"cannot compile {KERNEL_SOURCE.name} to PTX: no {wanted} found. Install the CUDA toolkit "
        "(nvcc on PATH or $CUDA_HOME/bin) or cuda-python (pip install cuda-python) for NVRTC."
    )


def _compile_nvcc(nvcc: str, flags: list[str], arch: str) -> str:
    with tempfile.TemporaryDirectory(prefix="roi_align_ptx_") as tmp:
        out = Path(tmp, "roi_align.ptx")
        cmd = [nvcc, "-ptx", f"-arch={arch}", "-O3", *flags, str(KERNEL_SOURCE), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{proc.stderr}")
        return out.read_text()


def _check(nvrtc: Any, result: tuple[Any, ...], what: str, prog: Any = None) -> tuple[Any, ...]:
    err = result[0]
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = ""
        if prog is not None:
            _, size = nvrtc.nvrtcGetProgramLogSize(prog)
            buf = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, buf)
            log = buf.decode(errors="replace").rstrip("\x00 ")
        raise RuntimeError(f"NVRTC {what} failed ({err}):\n{log}")
    return result[1:]


def _compile_nvrtc(nvrtc: Any, flags: list[str], arch: str) -> str:
    source = KERNEL_SOURCE.read_bytes()
    (prog,) = _check(nvrtc, nvrtc.nvrtcCreateProgram(source, KERNEL_SOURCE.name.encode(), 0, [], []), "create")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++14", *(f.encode() for f in flags)]
        _check(nvrtc, nvrtc.nvrtcCompileProgram(prog, len(opts), opts), "compile", prog)
        (size,) = _check(nvrtc, nvrtc.nvrtcGetPTXSize(prog), "PTX size")
        buf = b" " * size
        _check(nvrtc, nvrtc.nvrtcGetPTX(prog, buf), "get PTX")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return buf.decode().rstrip("\x00")
