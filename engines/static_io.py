"""Inputs and outputs of the static-shape graph (ONNX file or TensorRT engine), shared by their runners.

The graph (``build_engine.export``) takes ``frames``: ``uint8[B, H, W, 3]`` RGB, batch
dynamic, ``H × W`` fixed at export, and returns padded outputs (``D = detections_per_img``):

==============  =====================  =====================================================
name            shape, dtype           meaning
==============  =====================  =====================================================
``counts``      ``[B]`` int32          valid detections per frame (``0 <= count <= D``)
``boxes``       ``[B, D, 4]`` float32  ``(x1, y1, x2, y2)`` in frame pixels, zeros past count
``scores``      ``[B, D]`` float32     decreasing within the valid part
``labels``      ``[B, D]`` int32       class indices ``>= 1`` in the valid part
``mask_probs``  ``[B, D, 28, 28]``     float32 mask probabilities of the predicted class
==============  =====================  =====================================================

int32 rather than int64 for counts and labels: TensorRT's native integer type.

The file's metadata (ONNX ``metadata_props``, copied into the engine manifest by the
builder) is :class:`GraphInfo`. No onnxruntime, TensorRT or torchvision import here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.build_command import INPUT_SIZE_FLAG, SOURCE_SIZE_FLAG
from engines.runner import Detections

INPUT_NAME = "frames"
OUTPUT_NAMES = ("counts", "boxes", "scores", "labels", "mask_probs")
OUTPUT_DTYPES = {"counts": "int32", "boxes": "float32", "scores": "float32", "labels": "int32",
                 "mask_probs": "float32"}
BATCH_DIM = "batch"
FORMAT = "maskrcnn-streamer/static-graph/1"
INPUT_MODES = ("source", "input")
_REQUIRED = ("format", "name", "class_names", "config", "input_mode", "frame_size", "network_size",
             "precision", "roi_align")


class GraphMetadataError(ValueError):
    """The graph's metadata is missing or invalid; the message names the key and what to do."""


class FrameSizeError(ValueError):
    """A frame does not have the size the graph was built for."""


def _size(text: str, key: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise GraphMetadataError(f"metadata {key!r} must be 'HxW', got {text!r}") from None
    return h, w


@dataclass(frozen=True)
class GraphInfo:
    """What a static graph was exported for (stored as string metadata in the ONNX file)."""

    name: str
    class_names: tuple[str, ...]
    frame_size: tuple[int, int]
    """``(H, W)`` of the ``frames`` input."""
    input_mode: str
    """``"source"``: frames at camera resolution, resized in the graph (``--source-size``);
    ``"input"``: frames already at the network input size, no resize (``--input-size``)."""
    network_size: tuple[int, int]
    """``(h, w)`` after the resize, before padding to the size divisor."""
    precision: str
    """``"fp32"`` or ``"fp16"``."""
    roi_align: str
    """``"onnx"`` (standard operators, runs anywhere) or ``"plugin"`` (TensorRT plugin node)."""
    config: dict[str, Any] = field(default_factory=dict)
    """:class:`engines.model.config.MaskRCNNConfig` as a dict (the model's own settings)."""

    @property
    def size_flag(self) -> str:
        """The ``build-engine`` option that sets :attr:`frame_size` for this input mode."""
        return SOURCE_SIZE_FLAG if self.input_mode == "source" else INPUT_SIZE_FLAG

    def size_option(self, hw: tuple[int, int]) -> str:
        """``build-engine`` option and value for frames of size ``hw = (H, W)``, e.g.
        ``--source-size 1920x1080`` (``WxH``) or ``--input-size 800x1344`` (``HxW``)."""
        h, w = hw
        return f"{SOURCE_SIZE_FLAG} {w}x{h}" if self.input_mode == "source" else f"{INPUT_SIZE_FLAG} {h}x{w}"

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "name": self.name,
            "class_names": json.dumps(list(self.class_names)),
            "config": json.dumps(self.config),
            "input_mode": self.input_mode,
            "frame_size": "x".join(map(str, self.frame_size)),
            "network_size": "x".join(map(str, self.network_size)),
            "precision": self.precision,
            "roi_align": self.roi_align,
        }

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = "the graph") -> GraphInfo:
        """Parse :meth:`to_metadata` output; ``source`` names the file in error messages."""
        missing = [k for k in _REQUIRED if k not in props]
        if missing:
            raise GraphMetadataError(
                f"{source}: metadata keys {missing} are missing; it was not written by build_engine.export "
                "(export it again with build-engine)")
        if props["format"] != FORMAT:
            raise GraphMetadataError(f"{source}: metadata format {props['format']!r} is not {FORMAT!r}; "
                                     "export it again with this version of build-engine")
        if props["input_mode"] not in INPUT_MODES:
            raise GraphMetadataError(f"{source}: input_mode must be one of {INPUT_MODES}, "
                                     f"got {props['input_mode']!r}")
        try:
            names = json.loads(props["class_names"])
            config = json.loads(props["config"])
        except json.JSONDecodeError as e:
            raise GraphMetadataError(f"{source}: class_names/config metadata is not valid JSON ({e})") from e
        return cls(name=props["name"], class_names=tuple(str(n) for n in names),
                   frame_size=_size(props["frame_size"], "frame_size"), input_mode=props["input_mode"],
                   network_size=_size(props["network_size"], "network_size"), precision=props["precision"],
                   roi_align=props["roi_align"], config=config)


def output_shapes(detections: int, mask_size: int) -> dict[str, tuple[int | str, ...]]:
    """Output shapes (``"batch"`` = the dynamic dimension) for ``D = detections`` and ``mask_size`` (28)."""
    d, m = detections, mask_size
    return {"counts": (BATCH_DIM,), "boxes": (BATCH_DIM, d, 4), "scores": (BATCH_DIM, d),
            "labels": (BATCH_DIM, d), "mask_probs": (BATCH_DIM, d, m, m)}


def stack_frames(frames: Sequence[npt.NDArray[np.uint8]], info: GraphInfo) -> npt.NDArray[np.uint8]:
    """Frames → the ``frames`` input ``uint8[B, H, W, 3]`` (C-contiguous).

    Raises:
        ValueError: a frame is not ``uint8[H, W, 3]``.
        FrameSizeError: a frame's size differs from :attr:`GraphInfo.frame_size`; the message
            says which size the graph takes and the ``build-engine`` option to rebuild it.
    """
    h, w = info.frame_size
    for i, f in enumerate(frames):
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"frame {i} must be uint8[H, W, 3] RGB, got {f.dtype}{list(f.shape)}")
        if f.shape[:2] != (h, w):
            fh, fw = f.shape[:2]
            raise FrameSizeError(
                f"frame {i} is {fw}x{fh} (WxH) but {info.name} was built for {w}x{h} frames "
                f"(build-engine {info.size_option((h, w))}); resize the frames to {w}x{h} or rebuild "
                f"with build-engine {info.size_option((fh, fw))}")
    if not frames:
        return np.zeros((0, h, w, 3), np.uint8)
    return np.ascontiguousarray(np.stack(frames))


def unpack_detections(outputs: Mapping[str, npt.NDArray[Any]], image_size: tuple[int, int]) -> list[Detections]:
    """Padded graph outputs (by name, see the module docstring) → one :class:`Detections` per frame.

    Rows past each frame's count are dropped; labels become int64, the rest float32.
    """
    missing = [n for n in OUTPUT_NAMES if n not in outputs]
    if missing:
        raise ValueError(f"graph outputs {missing} are missing; the graph must have outputs {list(OUTPUT_NAMES)}")
    counts = np.asarray(outputs["counts"]).reshape(-1)
    boxes, scores = outputs["boxes"], outputs["scores"]
    labels, probs = outputs["labels"], outputs["mask_probs"]
    d = boxes.shape[1]
    dets = []
    for i, c in enumerate(counts):
        k = int(min(max(int(c), 0), d))
        dets.append(Detections(
            boxes=np.ascontiguousarray(boxes[i, :k], dtype=np.float32),
            scores=np.ascontiguousarray(scores[i, :k], dtype=np.float32),
            labels=labels[i, :k].astype(np.int64),
            mask_probs=np.ascontiguousarray(probs[i, :k], dtype=np.float32),
            image_size=image_size,
        ))
    return dets
