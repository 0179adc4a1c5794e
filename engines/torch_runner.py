"""The PyTorch runner: our :class:`MaskRCNN` on CPU or CUDA behind the :class:`Runner` interface."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from engines import devices
from engines.masks import paste_boxes
from engines.model.maskrcnn import MaskRCNN
from engines.runner import Detections, ModelInfo, Runner
from engines.weights import ModelLoadError, load_model


def group_by_size(frames: Sequence[npt.NDArray[np.uint8]]) -> dict[tuple[int, int], list[int]]:
    """Frame indices grouped by ``(H, W)``, groups in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, f in enumerate(frames):
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"frame {i} must be uint8[H, W, 3] RGB, got {f.dtype}{list(f.shape)}")
        groups.setdefault((f.shape[0], f.shape[1]), []).append(i)
    return groups


def torch_device(device: str | devices.Device) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (:func:`engines.devices.parse_device`) as a torch device.

    Raises:
        DeviceError: a name outside those forms.
        ValueError: a CUDA device on a machine where torch sees no CUDA.
    """
    dev = devices.parse_device(device)
    if dev.is_cuda and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available on this machine; "
                         "use --device cpu")
    return torch.device(str(dev))


FOLD_NORMS_BY_DEFAULT = False
"""Batch norms stay unfolded by default (measured in ``docs/performance.md`` §2).

Folding a norm into its convolution (``W * scale``, ``b * scale + shift``) is exact in real
arithmetic but not in float: every folded convolution rounds differently from torchvision's
``conv`` then ``x * scale + shift``. The difference is ~1e-7 relative, yet the RPN's and the
box head's NMS have near-tied boxes, and any rounding difference flips some of those ties:
with calibrated R50 weights at 800/1333, folding (in float32 or in float64, which only
removes the rounding of the folded weights, not the different summation) matched 74-80 % of
torchvision's instances where torchvision on another thread count matches ~90 %. Unfolded,
our backbone runs the same ops in the same order as torchvision's and sits at that floor.
Speed cost measured with ``streamer bench`` (``docs/performance.md`` §1). ``fuse=True``
(float64 folding) remains for speed when bit-level agreement with torchvision does not
matter; the export folds anyway (TensorRT fuses norms itself).
"""


class TorchRunner(Runner):
    """Runs a loaded :class:`MaskRCNN` in eval mode.

    On CUDA, frames go to the GPU once, as uint8, from a pinned host buffer (resize and
    normalization run in the model, on the GPU).

    Args:
        fuse: fold batch norms into convolutions (``True`` = arithmetic in float64, or the
            dtype name ``"float32"`` / ``"float64"``); default :data:`FOLD_NORMS_BY_DEFAULT`.
        paste_threshold: paste each frame's masks on the model's device at this threshold
            (box-local, :func:`engines.masks.paste_boxes`) and bring only those masks to the host
            (``Detections.pasted``); None leaves pasting to the caller. Meant for CUDA.
    """

    def __init__(self, model: MaskRCNN, class_names: Sequence[str], name: str,
                 device: str | devices.Device = "cpu", fuse: bool | str = FOLD_NORMS_BY_DEFAULT,
                 paste_threshold: float | None = None) -> None:
        self.device = torch_device(device)
        self.paste_threshold = paste_threshold
        dtypes = {"float32": torch.float32, "float64": torch.float64}
        if isinstance(fuse, str) and fuse not in dtypes:
            raise ValueError(f"fuse takes a bool or one of {sorted(dtypes)}, got {fuse!r}")
        if fuse:
            model = model.fuse_norms(dtypes[fuse] if isinstance(fuse, str) else torch.float64)
        self.model = model
        self.model.to(self.device).eval()
        self.info = ModelInfo(name=name, backend="pytorch", device=str(self.device), class_names=tuple(class_names))

    def infer(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        out: list[Detections | None] = [None] * len(frames)
        for (h, w), idx in group_by_size(frames).items():
            if self.device.type == "cuda":  # frames copied once into pinned memory, uploaded asynchronously
                pinned = torch.empty((len(idx), h, w, 3), dtype=torch.uint8, pin_memory=True)
                for j, i in enumerate(idx):
                    pinned[j].numpy()[...] = frames[i]
                batch = pinned.to(self.device, non_blocking=True)
            else:
                batch = torch.from_numpy(np.stack([frames[i] for i in idx]))
            for i, raw in zip(idx, self.model(batch), strict=True):
                det = Detections(
                    boxes=raw.boxes.float().cpu().numpy(),
                    scores=raw.scores.float().cpu().numpy(),
                    labels=raw.labels.cpu().numpy().astype(np.int64),
                    mask_probs=raw.mask_probs.float().cpu().numpy(),
                    image_size=(h, w),
                )
                if self.paste_threshold is not None:
                    det.pasted = (self.paste_threshold,
                                  paste_boxes(raw.mask_probs, raw.boxes, h, w, self.paste_threshold))
                out[i] = det
        return [d for d in out if d is not None]


def open_runner(path: str | Path | None, device: devices.Device, paste_threshold: float | None = None,
                **overrides: Any) -> TorchRunner:
    """The ``pytorch`` backend: a model file or torchvision checkpoint (None: the demo model).

    ``overrides`` apply to checkpoints (:func:`engines.weights.load_model`).

    Raises:
        ModelLoadError: the file cannot be opened, or the device cannot run it.
    """
    lm = load_model(path, **overrides)
    try:
        return TorchRunner(lm.model, lm.class_names, lm.name, device=device, paste_threshold=paste_threshold)
    except ValueError as e:
        raise ModelLoadError(str(e)) from e
