"""The ONNX Runtime runner: a portable static graph from ``build-engine`` behind the :class:`Runner` interface.

::

    runner = OrtRunner("model.onnx", device="cpu")
    dets = runner.infer(frames)          # every frame must have the size the graph was exported for

The graph must be the portable kind (``roi_align="onnx"``): graphs with the TensorRT RoIAlign
plugin node only run in TensorRT. Class names, model name and frame size come from the
file's metadata (:class:`engines.static_io.GraphInfo`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.devices import Device, DeviceError, parse_device
from engines.runner import Detections, ModelInfo, Runner
from engines.static_io import INPUT_NAME, OUTPUT_NAMES, GraphInfo, stack_frames, unpack_detections


class OrtLoadError(ValueError):
    """The ONNX file cannot be run here; the message names the file, the reason and what to do."""


def providers_for(device: str | Device, available: Sequence[str]) -> tuple[list[Any], str]:
    """ONNX Runtime execution providers and the device name for ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        OrtLoadError: an unknown device (:func:`engines.devices.parse_device`), or CUDA requested
            from an onnxruntime without CUDA.
    """
    try:
        dev = parse_device(device)
    except DeviceError as e:
        raise OrtLoadError(str(e)) from e
    if not dev.is_cuda:
        return ["CPUExecutionProvider"], "cpu"
    if "CUDAExecutionProvider" not in available:
        raise OrtLoadError(
            f"device {str(device)!r} requested but this onnxruntime has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu")
    return [("CUDAExecutionProvider", {"device_id": dev.cuda_index}), "CPUExecutionProvider"], f"cuda:{dev.cuda_index}"


def _file_metadata(path: Path) -> dict[str, str]:
    """The file's ``metadata_props`` read with ``onnx`` (empty if it cannot be parsed)."""
    try:
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # not an ONNX file at all: the caller reports onnxruntime's error
        return {}


def _plugin_refusal(path: Path) -> str:
    return (f"{path}: exported with the TensorRT RoIAlign plugin (--roi-align plugin), which ONNX Runtime "
            "cannot run; build a TensorRT engine from it, or export the portable graph with --roi-align onnx")


class OrtRunner(Runner):
    """Runs an exported portable graph with ONNX Runtime (CPU, or CUDA with onnxruntime-gpu)."""

    def __init__(self, path: str | Path, device: str | Device = "cpu") -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise OrtLoadError(f"{path}: no such file; pass an .onnx file written by build-engine")
        providers, dev = providers_for(device, ort.get_available_providers())
        try:
            session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            if _file_metadata(path).get("roi_align") == "plugin":
                raise OrtLoadError(_plugin_refusal(path)) from e
            raise OrtLoadError(f"{path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from e
        self.graph = GraphInfo.from_metadata(session.get_modelmeta().custom_metadata_map, str(path))
        if self.graph.roi_align != "onnx":
            raise OrtLoadError(_plugin_refusal(path))
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
            raise OrtLoadError(f"{path}: expected input {INPUT_NAME!r} and outputs {list(OUTPUT_NAMES)}, "
                               f"got {inputs} and {outputs}; export it again with build-engine")
        self.session: Any = session
        self.path = path
        self.info = ModelInfo(name=self.graph.name, backend="onnxruntime", device=dev,
                              class_names=self.graph.class_names)

    def infer(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        """One ``Detections`` per frame; all frames must have the graph's frame size (``FrameSizeError``)."""
        if self.session is None:
            raise RuntimeError(f"{self.path}: the runner is closed")
        batch = stack_frames(frames, self.graph)
        if batch.shape[0] == 0:
            return []
        values = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return unpack_detections(dict(zip(OUTPUT_NAMES, values, strict=True)), self.graph.frame_size)

    def close(self) -> None:
        self.session = None


def open_runner(path: str | Path | None, device: Device, paste_threshold: float | None = None,
                **overrides: Any) -> OrtRunner:
    """The ``onnxruntime`` backend: an ``.onnx`` portable graph. Masks are pasted by the caller
    (``paste_threshold`` is not used); ``overrides`` are for checkpoints and are ignored here."""
    if path is None:
        raise OrtLoadError("the onnxruntime backend needs an .onnx file written by build-engine")
    return OrtRunner(path, device=device)
