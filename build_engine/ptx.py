"""PTX of ``roi_align.cu`` for one GPU target, with the op's parameters baked in.

TensorRT AOT plugins ship PTX inside the engine; the driver JIT-compiles it for the GPU at
load time. Two things decide whether that load succeeds, and both are settled here, before
any TensorRT build starts:

* **the target architecture** (:func:`ptx_arch`): the build GPU's compute capability, except
  for ``ampere_plus`` engines, whose PTX targets ``compute_80`` (the lowest GPU of that
  family) so that sm_80/86/89 GPUs can JIT it as well as newer ones;
* **the PTX ISA version**, which follows the compiler's CUDA version (CUDA 13 writes ISA
  9.x). A driver loads PTX from compilers up to its own CUDA version only, so
  :func:`find_compiler` picks a compiler whose CUDA version is at most the driver's
  (``max_cuda``) and refuses with what it found otherwise.

Compilers, in order of preference: ``nvcc -ptx`` (CUDA toolkit on PATH or in
``$CUDA_HOME/bin``), then NVRTC through cuda-python (``pip install cuda-python``)::

    compiler = find_compiler(max_cuda=(12, 4))            # before the build: clear errors
    ptx = compile_ptx(RoIAlignParams(), ptx_arch((9, 0), "ampere_plus"), compiler=compiler)
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from build_engine.plugin_spec import KERNEL_SOURCE, kernel_macros
from engines.roi_align import RoIAlignParams

Backend = Literal["auto", "nvcc", "nvrtc"]
CudaVersion = tuple[int, int]

AMPERE_PLUS_ARCH = (8, 0)
"""PTX target of ``--hardware-compatibility ampere_plus`` engines: sm_80 is the lowest GPU they run on."""

_ENTRY = re.compile(r"^\s*(?:\.visible\s+)?\.entry\s+([A-Za-z_][A-Za-z0-9_$]*)\s*\(", re.MULTILINE)
_CC = re.compile(r"^(?:sm_|compute_)?(\d+)(?:\.(\d+))?$")
_RELEASE = re.compile(r"release\s+(\d+)\.(\d+)")
_PTX_VERSION = re.compile(r"^\s*\.version\s+(\d+)\.(\d+)", re.MULTILINE)
_TRT_WHEEL = re.compile(r"^tensorrt[-_]cu(\d+)(?:[-_](?:bindings|libs))?$", re.IGNORECASE)


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


def ptx_arch(build_gpu: str | tuple[int, int], hardware_compatibility: str = "none") -> tuple[int, int]:
    """The PTX target for an engine built on ``build_gpu`` with ``--hardware-compatibility``.

    ``none`` and ``same_compute_capability`` engines run only on the build GPU's compute
    capability: PTX for it. ``ampere_plus`` engines run on any GPU >= 8.0: PTX for
    :data:`AMPERE_PLUS_ARCH`, which every such GPU can JIT (PTX for the build GPU, e.g.
    compute_90, would not load on sm_80/86/89).

    Raises:
        ValueError: unknown level, or ``ampere_plus`` asked of a GPU below 8.0.
    """
    cc = parse_compute_capability(build_gpu)
    if hardware_compatibility in ("none", "same_compute_capability"):
        return cc
    if hardware_compatibility == "ampere_plus":
        if cc < AMPERE_PLUS_ARCH:
            raise ValueError(f"ampere_plus engines need a build GPU of compute capability >= 8.0, got {cc[0]}.{cc[1]}")
        return AMPERE_PLUS_ARCH
    raise ValueError("hardware compatibility must be one of ['ampere_plus', 'none', 'same_compute_capability'], "
                     f"got {hardware_compatibility!r}")


def parse_cuda_version(value: str | CudaVersion | None) -> CudaVersion | None:
    """``"12.4"`` / ``(12, 4)`` → ``(12, 4)``; None stays None."""
    if value is None or isinstance(value, tuple):
        return value
    parts = value.strip().split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        raise ValueError(f"CUDA version must look like '12.4', got {value!r}")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class Compiler:
    """A PTX compiler found on this machine and the CUDA version whose PTX ISA it writes."""

    kind: Literal["nvcc", "nvrtc"]
    cuda_version: CudaVersion
    path: str | None = None
    """nvcc's path (None for NVRTC)."""

    def describe(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.kind} {self.cuda_version[0]}.{self.cuda_version[1]}{where}"


def find_nvcc() -> str | None:
    """``nvcc`` on PATH, else ``$CUDA_HOME/bin/nvcc``, else None."""
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidate = Path(home, "bin", "nvcc") if home else None
    return str(candidate) if candidate and candidate.is_file() else None


def nvcc_version(nvcc: str) -> CudaVersion:
    """The CUDA release of ``nvcc`` (``nvcc --version``: "release 13.0")."""
    proc = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False, timeout=60)
    m = _RELEASE.search(proc.stdout)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"{nvcc} --version did not name a CUDA release (exit {proc.returncode}): "
                           f"{(proc.stdout + proc.stderr).strip()[:200]}")
    return int(m.group(1)), int(m.group(2))


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


def _nvrtc_version(nvrtc: Any) -> CudaVersion:
    err, major, minor = nvrtc.nvrtcVersion()
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"nvrtcVersion failed ({err})")
    return int(major), int(minor)


def available_compilers(backend: Backend = "auto") -> list[Compiler]:
    """The compilers ``backend`` allows that this machine has, in order of preference."""
    found = []
    if backend in ("auto", "nvcc"):
        nvcc = find_nvcc()
        if nvcc is not None:
            found.append(Compiler("nvcc", nvcc_version(nvcc), nvcc))
    if backend in ("auto", "nvrtc"):
        nvrtc = _load_nvrtc()
        if nvrtc is not None:
            found.append(Compiler("nvrtc", _nvrtc_version(nvrtc)))
    return found


def choose_compiler(found: list[Compiler], max_cuda: CudaVersion | None, backend: Backend = "auto") -> Compiler:
    """The first of ``found`` whose CUDA version is at most ``max_cuda`` (the driver's; None = any).

    Raises:
        RuntimeError: none found, or every one writes a PTX ISA newer than the driver loads;
            the message lists what was found and what to install.
    """
    wanted = {"auto": "nvcc or NVRTC", "nvcc": "nvcc", "nvrtc": "NVRTC"}[backend]
    if not found:
        raise RuntimeError(
            f"cannot compile {KERNEL_SOURCE.name} to PTX for the RoIAlign plugin: no {wanted} found. Install the "
            "CUDA toolkit (nvcc on PATH or $CUDA_HOME/bin) or cuda-python (pip install cuda-python) for NVRTC.")
    for compiler in found:
        if max_cuda is None or compiler.cuda_version <= max_cuda:
            return compiler
    assert max_cuda is not None
    limit = f"{max_cuda[0]}.x" if max_cuda[1] >= 99 else f"{max_cuda[0]}.{max_cuda[1]}"
    raise RuntimeError(
        f"the RoIAlign plugin's PTX must load under CUDA {limit} (the driver's CUDA version, no newer major than "
        f"TensorRT's CUDA), but every compiler found writes a newer PTX ISA: "
        f"{', '.join(c.describe() for c in found)}. Install a CUDA toolkit <= {limit} (point $CUDA_HOME at it, nvcc "
        f"first on PATH) or cuda-python {max_cuda[0]}.x with NVRTC <= {limit}, or update the driver / TensorRT.")


def tensorrt_cuda_major() -> int | None:
    """The CUDA major version the installed TensorRT wheels are built for (``tensorrt-cu12`` → 12),
    from package metadata (no TensorRT import); None when no such wheel is installed."""
    from importlib import metadata

    majors = set()
    for dist in metadata.distributions():
        m = _TRT_WHEEL.match(dist.metadata["Name"] or "")
        if m:
            majors.add(int(m.group(1)))
    return min(majors) if majors else None


def cuda_limit(driver: str | CudaVersion | None, tensorrt_major: int | None) -> CudaVersion | None:
    """The newest CUDA version whose PTX the TensorRT/driver pair takes: the driver's version, and no
    newer major than TensorRT's own CUDA (a CUDA 12 TensorRT with CUDA 13 PTX is refused)."""
    limit = parse_cuda_version(driver)
    if tensorrt_major is not None:
        limit = min(limit, (tensorrt_major, 99)) if limit is not None else (tensorrt_major, 99)
    return limit


def find_compiler(backend: Backend = "auto", max_cuda: str | CudaVersion | None = None) -> Compiler:
    """:func:`choose_compiler` over :func:`available_compilers` (see there)."""
    return choose_compiler(available_compilers(backend), parse_cuda_version(max_cuda), backend)


def ptx_entries(ptx: str) -> list[str]:
    """Names of the kernel entry points (``.entry``) defined in ``ptx``."""
    return _ENTRY.findall(ptx)


def ptx_isa_version(ptx: str) -> tuple[int, int] | None:
    """The ``.version`` directive of ``ptx`` (the PTX ISA), or None when absent."""
    m = _PTX_VERSION.search(ptx)
    return (int(m.group(1)), int(m.group(2))) if m else None


def compile_ptx(
    params: RoIAlignParams, arch: str | tuple[int, int], backend: Backend = "auto", compiler: Compiler | None = None
) -> str:
    """PTX text of ``roi_align.cu`` (both specialised entry points) for ``compute_<arch>``.

    ``compiler``: from :func:`find_compiler` (the build passes the one it chose up front);
    None = the first available for ``backend``, unchecked against a driver.

    Raises:
        RuntimeError: no compiler, or compilation failed (log included).
        ValueError: bad architecture or parameters the kernel cannot take.
    """
    major, minor = parse_compute_capability(arch)
    macros = tuple(sorted(kernel_macros(params).items()))
    chosen = compiler if compiler is not None else find_compiler(backend)
    return _compile_cached(macros, f"compute_{major}{minor}", chosen)


@functools.lru_cache(maxsize=32)
def _compile_cached(macros: tuple[tuple[str, str], ...], arch: str, compiler: Compiler) -> str:
    """Plain strings in and out: nothing of TensorRT's is cached here."""
    flags = [f"-D{k}={v}" for k, v in macros]
    if compiler.kind == "nvcc":
        assert compiler.path is not None
        return _compile_nvcc(compiler.path, flags, arch)
    nvrtc = _load_nvrtc()
    if nvrtc is None:
        raise RuntimeError("NVRTC (cuda-python) disappeared since it was found")
    return _compile_nvrtc(nvrtc, flags, arch)


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
