"""The one interface every runtime implements (PyTorch, ONNX Runtime, TensorRT).

A runner is loaded once and then called with batches of frames::

    runner = load_runner("model.safetensors", device="cpu")
    dets = runner.infer([frame0, frame1])          # list[Detections], one per frame
    masks = dets[0].box_masks(0.5)                 # list[BoxMask]: bool[h, w] inside each box

Frames are ``uint8`` RGB arrays of shape ``[H, W, 3]``. Frames in one ``infer``
call may differ in size; runners batch equal-sized frames together.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from engines.devices import Device

if TYPE_CHECKING:
    from engines.masks import BoxMask


@dataclass(frozen=True)
class ModelInfo:
    """What a runner serves: published in metrics, manifests and logs."""

    name: str
    """Model name (file stem or the name stored in the model file)."""
    backend: str
    """``"pytorch"``, ``"onnxruntime"`` or ``"tensorrt"``."""
    device: str
    """``"cpu"``, ``"cuda:0"``, ..."""
    class_names: tuple[str, ...]
    """Index ``i`` names label ``i``; index 0 is the background."""


@dataclass
class Detections:
    """Detections of one frame, in source-frame pixel coordinates.

    Invariant: all arrays have the same first dimension ``K`` (0 <= K <= 100),
    sorted by descending score.
    """

    boxes: npt.NDArray[np.float32]
    """``[K, 4]`` float32, ``(x1, y1, x2, y2)`` in source pixels, 0 <= x <= W, 0 <= y <= H."""
    scores: npt.NDArray[np.float32]
    """``[K]`` float32 in (0, 1]."""
    labels: npt.NDArray[np.int64]
    """``[K]`` int64 class indices, >= 1 (0 is background)."""
    mask_probs: npt.NDArray[np.float32]
    """``[K, 28, 28]`` float32 mask probabilities of the predicted class, in box coordinates."""
    image_size: tuple[int, int] = field(default=(0, 0))
    """``(H, W)`` of the source frame."""
    pasted: tuple[float, list[BoxMask]] | None = field(default=None, repr=False)
    """``(threshold, masks)`` when the runner already pasted the masks (on its device), else None."""

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def box_masks(self, threshold: float = 0.5) -> list[BoxMask]:
        """Binary masks inside each instance's clipped box (torchvision's paste, then ``> threshold``).

        Reuses the runner's pasted masks when they were made at ``threshold``.
        """
        if self.pasted is not None and self.pasted[0] == threshold:
            return self.pasted[1]
        from engines.masks import paste_boxes  # torch: imported by the first frame that pastes

        h, w = self.image_size
        return paste_boxes(self.mask_probs, self.boxes, h, w, threshold)

    def paste(self, threshold: float = 0.5) -> npt.NDArray[np.bool_]:
        """Full-resolution ``bool[K, H, W]`` masks: references and tests only (allocates K×H×W)."""
        from engines.masks import stack_full

        h, w = self.image_size
        return stack_full(self.box_masks(threshold), h, w)

    def select(self, keep: npt.NDArray[np.bool_]) -> Detections:
        """The detections where ``keep`` (``bool[K]``) is True, pasted masks included."""
        pasted = None
        if self.pasted is not None:
            pasted = (self.pasted[0], [m for m, k in zip(self.pasted[1], keep.tolist(), strict=True) if k])
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], self.mask_probs[keep],
                          self.image_size, pasted)

    def filter(self, score_threshold: float) -> Detections:
        """The detections with ``score >= score_threshold``."""
        return self.select(self.scores >= score_threshold)

    def invalid(self) -> dict[str, npt.NDArray[np.bool_]]:
        """Instances a runner should never return, by reason: ``bool[K]`` per reason (may overlap).

        ``nonfinite``: a NaN/inf box coordinate or score; ``inverted``: ``x2 < x1`` or ``y2 < y1``.
        A box outside the frame is valid (its mask is empty).
        """
        finite = np.isfinite(self.boxes).all(axis=1) & np.isfinite(self.scores)
        with np.errstate(invalid="ignore"):
            inverted = finite & ((self.boxes[:, 2] < self.boxes[:, 0]) | (self.boxes[:, 3] < self.boxes[:, 1]))
        return {"nonfinite": ~finite, "inverted": inverted}


class Runner(ABC):
    """A loaded model on one device. Not thread-safe: one inference worker per runner."""

    info: ModelInfo

    @abstractmethod
    def infer(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        """Run the model on ``frames`` (each ``uint8[H, W, 3]`` RGB); one ``Detections`` per frame."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for runners holding nothing
        """Release device resources. Idempotent."""


class RunnerFactory(Protocol):
    """What each runtime module exposes as ``open_runner`` (:data:`engines.backends.RUNTIMES`).

    Args:
        path: the model file; None only for runtimes that open the embedded demo model.
        device: the parsed device (:func:`engines.devices.parse_device`).
        paste_threshold: paste masks on the device at this threshold (``Detections.pasted``);
            None leaves pasting to the caller. The loader passes it for CUDA devices only.
        overrides: model settings for checkpoints (PyTorch); other runtimes ignore them.
    """

    def __call__(self, path: str | Path | None, device: Device, paste_threshold: float | None = None,
                 **overrides: Any) -> Runner: ...
