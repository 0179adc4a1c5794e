"""Mask pasting: 28×28 box-relative mask probabilities → binary masks, box-local.

Numerically identical to torchvision's ``paste_masks_in_image`` (padding 1) followed by
``> threshold``, but each instance's mask is computed and kept inside its own box only — never
a full-frame array per instance (at 1080p, 100 instances would be 100 × 2 MB):

1. pad each ``M×M`` mask with one zero pixel on every side (``M+2``) and grow its box
   about the centre by ``(M+2)/M`` (float32, as torchvision) so the padded mask covers it;
2. truncate the grown box to integers (``int64`` cast, towards zero): ``(x1, y1, x2, y2)``
   with ``x2``/``y2`` inclusive;
3. resize the padded mask bilinearly (``align_corners=False``) to
   ``max(y2-y1+1, 1) × max(x2-x1+1, 1)`` — the same call torchvision makes, so the same values;
4. keep the part that falls inside the frame, threshold ``> threshold``.

The result is a :class:`BoxMask`: the mask's top-left frame pixel and a ``bool[h, w]`` array
with ``0 <= x0``, ``x0 + w <= W`` (likewise in y). A box wholly outside the frame gives an
empty (``h == 0`` or ``w == 0``) mask. ``BoxMask.to_full`` materializes one full-frame mask,
for tests and references only.

On the host, step 3 and 4 run in a compiled kernel (:mod:`engines.mask_kernels`, one call per
frame, which keeps each mask as its COCO runs and RLE text — ``BoxMask.runs``,
``BoxMask.coco_counts`` — and writes its pixels only if they are read) that decides
every pixel farther than ``BAND`` (8e-6) from the threshold without PyTorch, decides the pixels
inside that band by a bound of their own, and hands an instance back to PyTorch's resize only
when one of them stays undecided (about 3 % of instances): the same masks, about 3× less CPU,
and no GIL held. Tensors on a GPU are resized there by PyTorch: CUDA runners paste on the GPU and
bring only the box-local masks to the host, in one copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from engines.box_kernels import grown_boxes, visible
from engines.mask_kernels import paste_frame
from engines.rle_kernels import runs_to_box

PADDING = 1
"""Zero pixels added on each side of the ``M×M`` mask before resizing (torchvision's value)."""


class BoxMask:
    """One instance's binary mask, clipped to the frame: frame pixels ``[y0:y0+h, x0:x0+w]``.

    Made from its pixels, ``BoxMask(x0, y0, mask)``, or — by the host paste — from its COCO runs
    alone (:meth:`from_runs`): its pixels are then decoded from the runs the first time ``mask``
    is read. The daemon's usual path (RLE messages, tracking on runs) never reads them, so no
    pixel of such a mask is ever written.
    """

    __slots__ = ("_mask", "area", "coco_counts", "frame_size", "runs", "shape", "x0", "y0")

    def __init__(self, x0: int, y0: int, mask: npt.NDArray[np.bool_], area: int = -1,
                 coco_counts: str | None = None, frame_size: tuple[int, int] | None = None,
                 runs: npt.NDArray[np.int64] | None = None) -> None:
        self.x0 = x0
        """Left column in frame pixels, ``0 <= x0 <= W``."""
        self.y0 = y0
        """Top row in frame pixels, ``0 <= y0 <= H``."""
        self._mask: npt.NDArray[np.bool_] | None = mask
        self.shape: tuple[int, int] = (int(mask.shape[0]), int(mask.shape[1]))
        """``(h, w)`` of the mask, without decoding it."""
        self.area = int(np.count_nonzero(mask)) if area < 0 else area
        """Foreground pixels, counted once at construction: masks are made on the postprocess
        workers, and the tracker on the event loop reads the count instead of recounting."""
        self.coco_counts = coco_counts
        """COCO compressed RLE counts of this mask in the ``frame_size`` frame it was pasted into,
        when the paste made them on the way (the host kernel does); None otherwise."""
        self.frame_size = frame_size
        """``(height, width)`` of the frame ``coco_counts`` and ``runs`` describe."""
        self.runs = runs
        """``coco_counts`` uncompressed: ``int64[n]`` run lengths over the column-major
        ``frame_size`` frame, zeros first (the tracker's mask overlaps walk them); None where
        ``coco_counts`` is."""

    @classmethod
    def from_runs(cls, x0: int, y0: int, shape: tuple[int, int], area: int, coco_counts: str,
                  frame_size: tuple[int, int], runs: npt.NDArray[np.int64]) -> BoxMask:
        """A mask known by its runs: ``shape`` ``(h, w)`` at ``(x0, y0)`` in a ``frame_size`` frame."""
        bm = cls.__new__(cls)
        bm.x0, bm.y0, bm._mask, bm.shape, bm.area = x0, y0, None, shape, area
        bm.coco_counts, bm.frame_size, bm.runs = coco_counts, frame_size, runs
        return bm

    @property
    def mask(self) -> npt.NDArray[np.bool_]:
        """``bool[h, w]``; ``h == 0`` or ``w == 0`` when the box lies outside the frame. Row- or
        column-major (decoded from runs: column-major, COCO's order)."""
        if self._mask is None:
            assert self.runs is not None and self.frame_size is not None  # from_runs sets them
            h, w = self.shape
            self._mask = runs_to_box(self.runs, self.frame_size[0], self.x0, self.y0, h, w).T
        return self._mask

    def __repr__(self) -> str:
        h, w = self.shape
        return f"BoxMask(x0={self.x0}, y0={self.y0}, shape=({h}, {w}), area={self.area})"

    def to_full(self, height: int, width: int) -> npt.NDArray[np.bool_]:
        """The full-frame ``bool[height, width]`` mask (allocates ``H×W``: tests and references only)."""
        out = np.zeros((height, width), dtype=bool)
        h, w = self.shape
        out[self.y0:self.y0 + h, self.x0:self.x0 + w] = self.mask
        return out


def expand_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Scale ``Tensor[K, 4]`` xyxy boxes about their centres by ``scale`` (torchvision's arithmetic)."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], dim=1)


def _grown_boxes(boxes: torch.Tensor | npt.NDArray[np.float32], scale: float,
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Integer grown boxes (torchvision's float32 arithmetic, truncated) and which boxes are sound.

    Host boxes go through the compiled :func:`engines.box_kernels.grown_boxes` (numpy and torch
    float32 element-wise operations round alike); device boxes stay on their device.
    """
    if isinstance(boxes, np.ndarray):
        return grown_boxes(np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1, 4), scale)
    t = boxes.to(torch.float32)
    sound_t = torch.isfinite(t).all(dim=1) & (t[:, 2] >= t[:, 0]) & (t[:, 3] >= t[:, 1])
    grown_t = expand_boxes(torch.nan_to_num(t), scale).to(torch.int64)
    return grown_t.cpu().numpy(), sound_t.cpu().numpy()


def paste_boxes(mask_probs: npt.NDArray[np.float32] | torch.Tensor,
                boxes: npt.NDArray[np.float32] | torch.Tensor,
                height: int, width: int, threshold: float = 0.5) -> list[BoxMask]:
    """Box-local binary masks, one :class:`BoxMask` per instance, on the host.

    ``mask_probs`` is ``[K, M, M]`` (probabilities of the predicted class), ``boxes`` ``[K, 4]``
    xyxy frame pixels; numpy arrays, or tensors on any device. Exactly torchvision's paste
    restricted to each box, thresholded ``> threshold``. On a GPU the resizing and the threshold
    run there and all masks come to the host in one copy. A box torchvision could not paste (a
    NaN/inf coordinate, or ``x2 < x1``/``y2 < y1``: never from a sound runner) gets an empty mask.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"pasting masks needs a positive frame size, got height={height}, width={width}")
    k, m = int(mask_probs.shape[0]), int(mask_probs.shape[-1])
    if k == 0:
        return []
    grown, sound = _grown_boxes(boxes, float(m + 2 * PADDING) / m)
    if isinstance(mask_probs, np.ndarray):
        return _paste_on_host(mask_probs, grown, sound, height, width, threshold)
    if mask_probs.device.type == "cpu":
        return _paste_on_host(mask_probs.numpy(), grown, sound, height, width, threshold)
    crops: list[tuple[int, int, Any]] = []
    with torch.inference_mode():
        padded = F.pad(mask_probs.float(), (PADDING,) * 4)
        for i, (x1, y1, x2, y2) in enumerate(grown.tolist()):
            x0, xe, y0, ye = visible(x1, y1, x2, y2, height, width)
            if not sound[i] or x0 >= xe or y0 >= ye:  # unsound, or wholly outside the frame: nothing to paste
                crops.append((x0, y0, np.zeros((0, 0), dtype=bool)))
            else:
                crops.append((x0, y0, _torch_paste(padded[i], (x1, y1, x2, y2), (x0, xe, y0, ye), threshold)))
        crops = _to_host(crops)
    return [BoxMask(x0, y0, np.ascontiguousarray(c)) for x0, y0, c in crops]


def _torch_paste(padded: torch.Tensor, box: tuple[int, int, int, int], window: tuple[int, int, int, int],
                 threshold: float) -> torch.Tensor:
    """One padded mask resized to its whole grown ``box`` (torchvision's call), cut to the visible
    ``window`` ``(x0, xe, y0, ye)`` and thresholded: ``Tensor[ye-y0, xe-x0]`` of bool."""
    x1, y1, x2, y2 = box
    x0, xe, y0, ye = window
    size = (max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1))
    resized = F.interpolate(padded[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return resized[y0 - y1:ye - y1, x0 - x1:xe - x1] > threshold


def _paste_on_host(probs: npt.NDArray[np.float32], grown: npt.NDArray[np.int64], sound: npt.NDArray[np.bool_],
                   height: int, width: int, threshold: float) -> list[BoxMask]:
    """Host paste: the compiled kernel decides each pixel and keeps each mask as its COCO runs and
    RLE text (:func:`engines.mask_kernels.paste_frame`, one call per frame; the pixels are decoded
    only if read: :class:`BoxMask`); an instance it leaves uncertain (a pixel it cannot decide as
    PyTorch would) is resized by PyTorch."""
    k, m = probs.shape[0], probs.shape[-1]
    padded = np.zeros((k, m + 2 * PADDING, m + 2 * PADDING), np.float32)  # zero border: torchvision's F.pad
    padded[:, PADDING:-PADDING, PADDING:-PADDING] = probs
    threshold32 = float(np.float32(threshold))  # PyTorch compares float32 masks with a float32 threshold
    windows, areas, uncertain, text, text_offsets, runs, run_offsets = paste_frame(
        padded, np.ascontiguousarray(grown, dtype=np.int64), np.ascontiguousarray(sound, dtype=np.bool_),
        height, width, threshold32)
    out = []
    size = (height, width)
    all_counts = text.tobytes().decode("ascii")
    text_at, runs_at = text_offsets.tolist(), run_offsets.tolist()
    for i, ((x0, y0, h, w), area, unsure) in enumerate(zip(windows.tolist(), areas.tolist(), uncertain.tolist(),
                                                              strict=True)):
        if h == 0:  # unsound, or wholly outside the frame
            out.append(BoxMask(x0, y0, np.zeros((0, 0), dtype=bool), 0))
        elif unsure:
            x1, y1, x2, y2 = grown[i].tolist()
            with torch.inference_mode():
                crop = _torch_paste(torch.from_numpy(padded[i]), (x1, y1, x2, y2), (x0, x0 + w, y0, y0 + h), threshold)
            out.append(BoxMask(x0, y0, np.ascontiguousarray(crop.numpy())))
        else:
            out.append(BoxMask.from_runs(x0, y0, (h, w), area, all_counts[text_at[i]:text_at[i + 1]], size,
                                         runs[runs_at[i]:runs_at[i + 1]]))
    return out


def _to_host(crops: list[tuple[int, int, Any]]) -> list[tuple[int, int, npt.NDArray[np.bool_]]]:
    """Box-local masks with the tensors among them brought to the host in one copy."""
    tensors = [c for _, _, c in crops if isinstance(c, torch.Tensor)]
    if not tensors:
        return crops
    flat = torch.cat([c.reshape(-1) for c in tensors]).cpu().numpy()
    start, host = 0, []
    for x0, y0, c in crops:
        if isinstance(c, torch.Tensor):
            n = c.numel()
            host.append((x0, y0, flat[start:start + n].reshape(tuple(c.shape))))
            start += n
        else:
            host.append((x0, y0, c))
    return host


def paste_masks(mask_probs: npt.NDArray[np.float32], boxes: npt.NDArray[np.float32], height: int,
                width: int, threshold: float = 0.5) -> npt.NDArray[np.bool_]:
    """Full-frame ``bool[K, height, width]`` masks (for references and tests, never the publish path)."""
    return stack_full(paste_boxes(mask_probs, boxes, height, width, threshold), height, width)


def stack_full(masks: Sequence[BoxMask], height: int, width: int) -> npt.NDArray[np.bool_]:
    """``bool[K, height, width]`` from box masks (tests and references only)."""
    out = np.zeros((len(masks), height, width), dtype=bool)
    for k, bm in enumerate(masks):
        out[k] = bm.to_full(height, width)
    return out
