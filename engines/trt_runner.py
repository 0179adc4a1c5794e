"""The TensorRT runner: a ``build-engine`` engine behind the :class:`Runner` interface.

Loading order (each step refuses with a message that says what to do):

1. read ``<engine>.manifest.json`` (:mod:`engines.manifest`); none → refuse;
2. compare it with this machine (TensorRT version, GPU compute capability, OS) and the
   caller's :class:`~engines.manifest.Requirements` → :class:`EngineIncompatibleError`
   naming every difference and the exact ``build-engine`` command that rebuilds the engine.
   This happens **before** ``tensorrt`` or ``pycuda`` is imported and before the engine's
   bytes are read, so a machine without TensorRT or a GPU gets the rebuild command too;
3. import TensorRT and pycuda (``pycuda.autoprimaryctx``: the device's primary context,
   shared with torch and TensorRT), deserialize, and require a non-null engine.

Inference: frames are copied into a pinned host buffer, uploaded on the runner's stream,
run with ``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3`` (optionally
replayed as a CUDA graph per batch size, captured with torch), and the padded outputs (``counts [B]``,
``boxes [B, D, 4]``, ``scores [B, D]``, ``labels [B, D]``, ``mask_probs [B, D, 28, 28]``)
come back to pinned buffers. Batches above the profile's maximum are split; batches below
its minimum are padded with copies of the last frame.

Masks: :meth:`TrtRunner.infer` returns 28×28 ``mask_probs`` like every runner
(``Detections.paste()`` pastes on the CPU); :meth:`TrtRunner.paste_on_gpu` pastes with
torch on this GPU (same primary context), equal to torchvision's paste, and downloads
only the binary masks. :class:`Detections` is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

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


def parse_cuda_device(device: str) -> int:
    """``"cuda"`` / ``"cuda:N"`` → ``N``; anything else is refused (TensorRT runs on a CUDA GPU only)."""
    if device == "cuda":
        return 0
    head, _, index = device.partition(":")
    if head != "cuda" or not index.isdigit():
        raise ValueError(f"the TensorRT runner needs a CUDA device ('cuda' or 'cuda:N'), got {device!r}")
    return int(index)


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


def _import_cuda_runtime() -> tuple[Any, Any]:
    """``(tensorrt, pycuda.driver)`` with the primary context made current; clear errors otherwise."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise ImportError(f"the TensorRT runner needs TensorRT with its libraries (libnvinfer) "
                          f"(pip install tensorrt on the GPU machine): import tensorrt failed: {exc}") from exc
    try:
        import pycuda.autoprimaryctx  # noqa: F401  (shares the primary context with torch/TensorRT)
        import pycuda.driver as cuda
    except (ImportError, OSError) as exc:
        raise ImportError(f"the TensorRT runner needs pycuda (pip install pycuda on the GPU machine): {exc}") from exc
    return trt, cuda


class TrtRunner(Runner):
    """Runs a ``build-engine`` TensorRT engine on one GPU. Not thread-safe.

    Args:
        path: the engine file; ``<path>.manifest.json`` must lie next to it.
        device: ``"cuda"`` or ``"cuda:N"``.
        requirements: what the caller needs (precision, batch size, input size), checked
            against the manifest before loading.
        cuda_graph: replay each batch size's ``execute_async_v3`` as a CUDA graph, captured
            with ``torch.cuda.CUDAGraph`` on a torch stream (pycuda has no stream capture).

    Raises:
        FileNotFoundError / ValueError: no or unreadable manifest (rebuild).
        EngineIncompatibleError: the manifest rules this machine out (message has the rebuild command).
        ImportError: TensorRT or pycuda missing. RuntimeError: TensorRT refused the engine.
    """

    def __init__(self, path: str | Path, device: str = "cuda", requirements: Requirements | None = None,
                 cuda_graph: bool = False) -> None:
        self.path = Path(path)
        self.device_index = parse_cuda_device(device)
        self.manifest = read_manifest(manifest_path_for(self.path))
        self.warnings: list[Mismatch] = ensure_compatible(
            self.manifest, collect_runtime_environment(self.device_index), requirements, engine=self.path)
        self.graph = graph_info(self.manifest, source=str(manifest_path_for(self.path)))
        self.frame_hw = self.graph.frame_size
        self.info = ModelInfo(name=self.graph.name, backend="tensorrt", device=f"cuda:{self.device_index}",
                              class_names=tuple(self.manifest.class_names))
        self._closed = True
        self._load(cuda_graph)

    # ------------------------------------------------------------------ loading
    def _load(self, cuda_graph: bool) -> None:
        if self.device_index != 0:
            raise ValueError(f"pycuda's primary context is device 0; run with CUDA_VISIBLE_DEVICES={self.device_index} "
                             "and device 'cuda' to use that GPU")
        trt, cuda = _import_cuda_runtime()
        self._trt, self._cuda = trt, cuda
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        if self.manifest.build.version_compatible:
            self._runtime.engine_host_code_allowed = True
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.path} although its manifest matches this "
                               "machine (see TensorRT's log above): rebuild it with the command in its manifest")
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1 or set(OUTPUT_NAMES) - set(names):
            raise RuntimeError(f"{self.path} has I/O {names}; expected one frame input and outputs {list(OUTPUT_NAMES)}: "
                               "rebuild it with build-engine")
        self._input = inputs[0]
        _, _, max_shape = engine.get_tensor_profile_shape(self._input, 0)
        self._bmin = int(engine.get_tensor_profile_shape(self._input, 0)[0][0])
        self._bmax = int(max_shape[0])
        self._context.set_input_shape(self._input, tuple(max_shape))
        self._host: dict[str, npt.NDArray[Any]] = {}
        self._dev: dict[str, Any] = {}
        for name in names:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            self._host[name] = cuda.pagelocked_empty(shape, dtype)
            self._dev[name] = cuda.mem_alloc(max(self._host[name].nbytes, 1))
            self._context.set_tensor_address(name, int(self._dev[name]))
        self._stream = cuda.Stream()
        self._graph_stream: Any = None
        if cuda_graph:  # pycuda has no stream capture: torch's CUDAGraph, same primary context
            import torch

            self._graph_stream = torch.cuda.Stream(device=self.device_index)
        self._graphs: dict[int, Any] = {}
        self._closed = False

    # ------------------------------------------------------------------ inference
    def _execute(self, batch: int) -> None:
        """Enqueue the engine for ``batch`` frames (inputs uploaded on ``self._stream``)."""
        ctx, stream = self._context, self._stream
        ctx.set_input_shape(self._input, (batch, *self.frame_hw, 3))
        if self._graph_stream is None:
            if not ctx.execute_async_v3(stream.handle):
                raise RuntimeError(f"TensorRT failed to run {self.path.name} on a batch of {batch}")
            return
        import torch

        stream.synchronize()  # the upload is on pycuda's stream, the graph runs on torch's
        graph = self._graphs.get(batch)
        if graph is None:  # one plain run first (TensorRT's deferred setup), then capture
            if not ctx.execute_async_v3(stream.handle):
                raise RuntimeError(f"TensorRT failed to run {self.path.name} on a batch of {batch}")
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._graph_stream):
                ctx.execute_async_v3(self._graph_stream.cuda_stream)
            self._graphs[batch] = graph
        with torch.cuda.stream(self._graph_stream):
            graph.replay()
        self._graph_stream.synchronize()

    def _run(self, frames: npt.NDArray[np.uint8], batch: int) -> list[Detections]:
        """One engine run on ``frames`` ``[n, H, W, 3]``, padded to ``batch`` with the last frame."""
        cuda, host, dev = self._cuda, self._host, self._dev
        n = len(frames)
        host_in = host[self._input]
        host_in[:n] = frames
        host_in[n:batch] = frames[n - 1]
        cuda.memcpy_htod_async(dev[self._input], host_in[:batch], self._stream)
        self._execute(batch)
        for name in OUTPUT_NAMES:
            cuda.memcpy_dtoh_async(host[name][:batch], dev[name], self._stream)
        self._stream.synchronize()
        # copies: the pinned buffers are reused by the next run
        return unpack_detections({name: host[name][:n].copy() for name in OUTPUT_NAMES}, self.frame_hw)

    def infer(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        if self._closed:
            raise RuntimeError(f"TensorRT runner for {self.path.name} is closed")
        stacked = stack_frames(frames, self.graph)  # checks dtype and the engine's frame size
        out: list[Detections] = []
        start = 0
        for take, batch in batch_plan(len(stacked), self._bmin, self._bmax):
            out += self._run(stacked[start:start + take], batch)
            start += take
        return out

    def paste_on_gpu(self, detections: Detections, threshold: float = 0.5) -> npt.NDArray[np.bool_]:
        """``bool[K, H, W]`` masks pasted on this GPU with torch (equal to ``detections.paste(threshold)``)."""
        import torch

        from engines.masks import paste_masks_torch

        dev = torch.device("cuda", self.device_index)
        h, w = detections.image_size
        probs = paste_masks_torch(torch.from_numpy(detections.mask_probs).to(dev),
                                  torch.from_numpy(detections.boxes).to(dev), h, w)
        return (probs > threshold).cpu().numpy()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stream.synchronize()
        self._graphs.clear()
        for buf in self._dev.values():
            buf.free()
        self._dev.clear()
        self._host.clear()
        del self._context, self._engine
