"""Host (CPU) build of ``roi_align.cu``: the CUDA kernel's own source, run through ctypes.

``g++ -DRA_HOST`` turns the kernel's grid-stride loop into one plain loop, so the very
code that TensorRT runs can be compared with :func:`engines.roi_align.multilevel_roi_align`
on a machine without a GPU. Used by the tests; needs a C++ compiler (``$CXX`` or ``g++``)::

    kernel = load_host_kernel(RoIAlignParams())
    pooled = kernel([p2, p3, p4, p5], rois)   # float32 or float16 ndarrays, NCHW

Libraries are cached by a hash of the source, flags and compiler version under
``<tempdir>/maskrcnn_streamer_kernels`` (written atomically, safe for parallel tests).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from build_engine.plugin_spec import (
    ENTRY_POINTS,
    KERNEL_SCALAR_ARGS,
    KERNEL_SOURCE,
    NUM_LEVELS,
    entry_points,
    macro_flags,
)
from engines.roi_align import RoIAlignParams

HOST_FLAGS = ("-x", "c++", "-std=c++14", "-O2", "-shared", "-fPIC", "-DRA_HOST", "-ffp-contract=off")
"""No FMA contraction: keeps the float operation sequence equal to the PyTorch reference."""

_INT32_MAX = 2**31 - 1


def find_compiler() -> str | None:
    """Path of the C++ compiler to use (``$CXX``, else ``g++``), or None if absent."""
    return shutil.which(os.environ.get("CXX", "g++"))


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "maskrcnn_streamer_kernels"


def build_host_library(params: RoIAlignParams, cache_dir: Path | None = None) -> Path:
    """Compile ``roi_align.cu`` for the host with ``params`` baked in; return the ``.so`` path.

    Raises:
        RuntimeError: no C++ compiler, or the compilation failed (its output included).
    """
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found: install g++ (apt-get install g++) or set $CXX")
    flags = [*HOST_FLAGS, *macro_flags(params)]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    digest = hashlib.sha256()
    for part in (KERNEL_SOURCE.read_bytes(), " ".join(flags).encode(), version.encode()):
        digest.update(part)
    out_dir = cache_dir or default_cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"roi_align_host_{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    fd, tmp_name = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [compiler, *flags, str(KERNEL_SOURCE), "-o", tmp_name]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        Path(tmp_name).unlink(missing_ok=True)
        raise RuntimeError(f"host build of {KERNEL_SOURCE.name} failed ({' '.join(cmd)}):\n{proc.stderr}")
    os.replace(tmp_name, target)
    return target


class HostRoIAlign:
    """The kernel's two entry points, callable with numpy arrays."""

    def __init__(self, params: RoIAlignParams, library: Path) -> None:
        self.params = params
        self.library = library
        self._lib = ctypes.CDLL(str(library))
        self.entry_points = entry_points(params)
        """Entry point per dtype: the same specialised names as the PTX."""
        argtypes = [ctypes.c_void_p] * (NUM_LEVELS + 1) + [ctypes.c_int] * len(KERNEL_SCALAR_ARGS) + [ctypes.c_void_p]
        for name in self.entry_points.values():
            getattr(self._lib, name).argtypes = argtypes
            getattr(self._lib, name).restype = None
        for name in ("ra_host_half_to_float", "ra_host_float_to_half"):
            getattr(self._lib, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong]
            getattr(self._lib, name).restype = None

    def __call__(self, features: Sequence[npt.NDArray[np.floating]], rois: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
        """Pool ``[R, C, S, S]`` (features' dtype) from four ``[N, C, H_l, W_l]`` maps.

        Raises:
            ValueError: wrong number of levels, shapes or dtypes (message names which).
        """
        if len(features) != NUM_LEVELS:
            raise ValueError(f"the kernel takes {NUM_LEVELS} feature levels, got {len(features)}")
        dtype = np.dtype(features[0].dtype)
        if dtype.name not in ENTRY_POINTS:
            raise ValueError(f"features must be float32 or float16, got {dtype}")
        feats = [np.ascontiguousarray(f) for f in features]
        n, c = feats[0].shape[:2] if feats[0].ndim == 4 else (-1, -1)
        for i, f in enumerate(feats):
            if f.ndim != 4 or f.shape[:2] != (n, c) or f.dtype != dtype:
                raise ValueError(
                    f"feature level {i} must be [{n}, {c}, H, W] {dtype} like level 0, got {f.shape} {f.dtype}"
                )
        boxes = np.ascontiguousarray(rois, dtype=np.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise ValueError(f"rois must be [R, 5] (batch_index, x1, y1, x2, y2), got shape {boxes.shape}")
        sizes = [d for f in feats for d in f.shape[2:]]
        scalars = [boxes.shape[0], c, n, *sizes]
        if max(scalars) > _INT32_MAX:
            raise ValueError(f"kernel sizes must fit int32, got {scalars}")
        s = self.params.output_size
        out = np.empty((boxes.shape[0], c, s, s), dtype=dtype)
        entry = getattr(self._lib, self.entry_points[dtype.name])
        entry(*(f.ctypes.data for f in feats), boxes.ctypes.data, *scalars, out.ctypes.data)
        return out

    def half_to_float(self, bits: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
        """The kernel's host binary16 → float32 conversion (for testing it)."""
        src = np.ascontiguousarray(bits, dtype=np.uint16)
        dst = np.empty(src.shape, dtype=np.float32)
        self._lib.ra_host_half_to_float(src.ctypes.data, dst.ctypes.data, src.size)
        return dst

    def float_to_half(self, values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
        """The kernel's host float32 → binary16 conversion (round to nearest even)."""
        src = np.ascontiguousarray(values, dtype=np.float32)
        dst = np.empty(src.shape, dtype=np.uint16)
        self._lib.ra_host_float_to_half(src.ctypes.data, dst.ctypes.data, src.size)
        return dst


@functools.lru_cache(maxsize=16)
def load_host_kernel(params: RoIAlignParams) -> HostRoIAlign:
    """Build (or reuse) the host library for ``params`` and load it."""
    return HostRoIAlign(params, build_host_library(params))
