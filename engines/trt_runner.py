"""The TensorRT runner: a ``build-engine`` engine behind the :class:`Runner` interface.

Loading order (each step refuses with a message that says what to do):

1. read ``<engine>.manifest.json`` (:mod:`engines.manifest`); none → refuse;
2. compare it with this machine (TensorRT version, GPU compute capability, OS) and the
   caller's :class:`~engines.manifest.Requirements` → :class:`EngineIncompatibleError`
   naming every difference and the exact ``build-engine`` command that rebuilds the engine.
   This happens **before** ``tensorrt`` is imported and before the engine's bytes are read,
   so a machine without TensorRT or a GPU gets the rebuild command too;
3. import TensorRT, deserialize, and require a non-null engine.

CUDA without pycuda: device buffers, pinned host buffers and the stream are torch's
(``torch.cuda``, a hard dependency anyway). torch uses the CUDA runtime API, which makes the
device's primary context (shared with TensorRT) current on whichever thread calls it, and
every entry point here runs inside ``torch.cuda.device(...)``: the runner may be loaded on
one thread, run on another and closed on a third.

Inference: frames are copied into a pinned host buffer, uploaded on the runner's stream,
run with ``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3(stream)``, and the
padded outputs (``counts [B]``, ``boxes [B, D, 4]``, ``scores [B, D]``, ``labels [B, D]``,
``mask_probs [B, D, 28, 28]``) come back to pinned buffers, then to numpy
:class:`Detections`. With ``paste_threshold`` set, each frame's masks are also pasted on the
GPU from the device outputs (:func:`engines.masks.paste_boxes`: box-local, thresholded) and only
those box-local masks come to the host, in one copy (``Detections.pasted``).
Batches above the profile's maximum are split; batches below its minimum are padded with
copies of the last frame. No CUDA graph: the engine has data-dependent shapes (NMS,
ScatterND), which stream capture cannot record.

Threads: :meth:`TrtRunner.infer` and :meth:`TrtRunner.close` hold one lock, so ``close``
from any thread waits for a running batch, then releases everything; it is idempotent.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.devices import Device, parse_device
from engines.machine import collect_runtime_environment
from engines.manifest import (
    Manifest,
    Mismatch,
    Requirements,
    ensure_compatible,
    manifest_path_for,
    read_manifest,
)
from engines.runner import Detections, ModelInfo, Runner
from engines.static_io import (
    OUTPUT_NAMES,
    GraphInfo,
    GraphMetadataError,
    stack_frames,
    unpack_detections,
)


def graph_info(manifest: Manifest, source: str = "the engine manifest") -> GraphInfo:
    """The exported graph's description (frame size, input mode, classes) recorded in the manifest."""
    if manifest.graph is None:
        raise GraphMetadataError(f"{source} has no graph metadata (it predates build_engine.export's metadata): "
                                 "rebuild the engine with build-engine")
    return GraphInfo.from_metadata(manifest.graph, source=source)


def cuda_index(device: str | Device) -> int:
    """``"cuda"`` → 0, ``"cuda:N"`` → ``N`` (:func:`engines.devices.parse_device`).

    Raises:
        DeviceError: not a device name.
        ValueError: the CPU (TensorRT runs on a CUDA GPU only).
    """
    dev = parse_device(device)
    if not dev.is_cuda:
        raise ValueError(f"the TensorRT runner needs a CUDA device ('cuda' or 'cuda:N'), got {str(device)!r}")
    return dev.cuda_index


def batch_plan(n: int, batch_min: int, batch_max: int) -> list[tuple[int, int]]:
    """Split ``n`` frames into engine runs: ``(frames taken, batch size run)`` per run.

    Each run takes up to ``batch_max`` frames; a run with fewer than ``batch_min`` frames is
    padded up to ``batch_min`` (the extra outputs are dropped).
    """
    if not 1 <= batch_min <= batch_max:
        raise ValueError(f"need 1 <= batch_min <= batch_max, got {batch_min}, {batch_max}")
    runs = []
    for start in range(0, n, batch_max):
        take = min(batch_max, n - start)
        runs.append((take, max(take, batch_min)))
    return runs


def torch_dtype(dtype: npt.DTypeLike) -> Any:
    """The torch dtype of a numpy dtype (``trt.nptype`` of an engine tensor → its torch buffer)."""
    import torch

    return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise ImportError(f"the TensorRT runner needs TensorRT with its libraries (libnvinfer) "
                          f"(pip install tensorrt on the GPU machine): import tensorrt failed: {exc}") from exc
    return trt


class _EngineSession:
    """The loaded engine, its execution context, torch buffers and stream on one CUDA device.

    Every method enters ``torch.cuda.device(index)`` first, so any thread may call it.
    """

    def __init__(self, path: Path, device_index: int, frame_hw: tuple[int, int], version_compatible: bool) -> None:
        import torch

        if not torch.cuda.is_available() or device_index >= torch.cuda.device_count():
            raise RuntimeError(f"the TensorRT runner needs CUDA device {device_index}, but torch sees "
                               f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA device(s)")
        trt = _import_tensorrt()
        self.path, self.frame_hw = path, frame_hw
        self.device = torch.device("cuda", device_index)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            if version_compatible:
                self.runtime.engine_host_code_allowed = True
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise RuntimeError(f"TensorRT could not deserialize {path} although its manifest matches this "
                                   "machine (see TensorRT's log above): rebuild it with the command in its manifest")
            self.engine = engine
            self.context = engine.create_execution_context()
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            if len(inputs) != 1 or set(OUTPUT_NAMES) - set(names):
                raise RuntimeError(f"{path} has I/O {names}; expected one frame input and outputs "
                                   f"{list(OUTPUT_NAMES)}: rebuild it with build-engine")
            self.input = inputs[0]
            min_shape, _, max_shape = engine.get_tensor_profile_shape(self.input, 0)
            self.batch_min, self.batch_max = int(min_shape[0]), int(max_shape[0])
            self.context.set_input_shape(self.input, tuple(max_shape))
            self.stream = torch.cuda.Stream(device=self.device)
            self.host: dict[str, Any] = {}
            self.dev: dict[str, Any] = {}
            for name in names:
                shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
                if min(shape, default=0) < 0:
                    raise RuntimeError(f"{path}: tensor {name!r} has shape {shape} at the profile's largest batch; "
                                       "the runner needs static output shapes: rebuild it with build-engine")
                dtype = torch_dtype(trt.nptype(engine.get_tensor_dtype(name)))
                self.dev[name] = torch.empty(shape, dtype=dtype, device=self.device)
                self.host[name] = torch.empty(shape, dtype=dtype, pin_memory=True)
                if not self.context.set_tensor_address(name, self.dev[name].data_ptr()):
                    raise RuntimeError(f"TensorRT refused the device buffer of {name!r} {shape}")

    def paste(self, dets: list[Detections], threshold: float) -> None:
        """Paste the masks of ``dets`` (the last :meth:`run`'s frames, in order) on the GPU."""
        import torch

        from engines.masks import paste_boxes

        with torch.cuda.device(self.device):
            for i, det in enumerate(dets):
                k = len(det)
                det.pasted = (threshold, paste_boxes(self.dev["mask_probs"][i, :k], self.dev["boxes"][i, :k],
                                                     *det.image_size, threshold))

    def run(self, frames: npt.NDArray[np.uint8], batch: int) -> dict[str, npt.NDArray[Any]]:
        """One engine run on ``frames [n, H, W, 3]`` padded to ``batch``; the first ``n`` outputs (copies)."""
        import torch

        n = len(frames)
        host_in = self.host[self.input]
        host_in[:n].copy_(torch.from_numpy(frames))
        host_in[n:batch] = host_in[n - 1]
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            self.dev[self.input][:batch].copy_(host_in[:batch], non_blocking=True)
            if not self.context.set_input_shape(self.input, (batch, *self.frame_hw, 3)):
                raise RuntimeError(f"TensorRT refused the input shape {(batch, *self.frame_hw, 3)} of {self.path.name}")
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run {self.path.name} on a batch of {batch}")
            for name in OUTPUT_NAMES:
                self.host[name][:batch].copy_(self.dev[name][:batch], non_blocking=True)
            self.stream.synchronize()
        # copies: the pinned buffers are reused by the next run
        return {name: self.host[name][:n].numpy().copy() for name in OUTPUT_NAMES}

    def release(self) -> None:
        """Wait for the stream, then drop the context, engine, runtime and buffers (in that order)."""
        import torch

        with torch.cuda.device(self.device):
            try:
                self.stream.synchronize()
            finally:
                for attr in ("context", "engine", "runtime", "dev", "host", "stream"):
                    if hasattr(self, attr):
                        delattr(self, attr)


class TrtRunner(Runner):
    """Runs a ``build-engine`` TensorRT engine on one GPU.

    ``infer`` and ``close`` are serialized by a lock: load, run and close may happen on
    different threads; ``close`` waits for a running batch and is idempotent.

    Args:
        path: the engine file; ``<path>.manifest.json`` must lie next to it.
        device: ``"cuda"`` or ``"cuda:N"``.
        requirements: what the caller needs (precision, batch size, input size), checked
            against the manifest before loading.
        paste_threshold: paste masks on the GPU at this threshold (the publish threshold);
            None leaves pasting to the caller (on the CPU).

    Raises:
        FileNotFoundError / ValueError: no or unreadable manifest (rebuild).
        EngineIncompatibleError: the manifest rules this machine out (message has the rebuild command).
        ImportError: TensorRT missing. RuntimeError: no such CUDA device, or TensorRT refused the engine.
    """

    paste_threshold: float | None = None
    """Paste masks on the GPU at this threshold (None: the caller pastes on the host)."""

    def __init__(self, path: str | Path, device: str | Device = "cuda", requirements: Requirements | None = None,
                 paste_threshold: float | None = None) -> None:
        self._lock = threading.Lock()
        self.paste_threshold = paste_threshold
        self._session: _EngineSession | None = None
        self.path = Path(path)
        self.device_index = cuda_index(device)
        self.manifest = read_manifest(manifest_path_for(self.path))
        self.warnings: list[Mismatch] = ensure_compatible(
            self.manifest, collect_runtime_environment(self.device_index), requirements, engine=self.path)
        self.graph = graph_info(self.manifest, source=str(manifest_path_for(self.path)))
        self.frame_hw = self.graph.frame_size
        self.info = ModelInfo(name=self.graph.name, backend="tensorrt", device=f"cuda:{self.device_index}",
                              class_names=tuple(self.manifest.class_names))
        self._session = _EngineSession(self.path, self.device_index, self.frame_hw,
                                       self.manifest.build.version_compatible)

    @property
    def closed(self) -> bool:
        return self._session is None

    def infer(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        stacked = stack_frames(frames, self.graph)  # checks dtype and the engine's frame size
        with self._lock:
            session = self._session
            if session is None:
                raise RuntimeError(f"TensorRT runner for {self.path.name} is closed")
            out: list[Detections] = []
            start = 0
            for take, batch in batch_plan(len(stacked), session.batch_min, session.batch_max):
                outputs = session.run(stacked[start:start + take], batch)
                dets = unpack_detections(outputs, self.frame_hw)
                if self.paste_threshold is not None:
                    session.paste(dets, self.paste_threshold)
                out += dets
                start += take
        return out

    def close(self) -> None:
        """Release the engine and its buffers; safe from any thread, waits for a running batch, idempotent."""
        with self._lock:
            session, self._session = self._session, None
            if session is not None:
                session.release()


def open_runner(path: str | Path | None, device: Device, paste_threshold: float | None = None,
                **overrides: Any) -> TrtRunner:
    """The ``tensorrt`` backend: a ``build-engine`` engine with its manifest. ``overrides`` are
    for checkpoints and are ignored here."""
    if path is None:
        raise ValueError("the tensorrt backend needs an .engine file written by build-engine")
    return TrtRunner(path, device=device, paste_threshold=paste_threshold)
