"""The frame message: one JSON object per inferred frame (schema ``maskrcnn-streamer/frame/1``).

Shared by ``streamer process`` (JSONL) and every sink of ``streamer run``. The JSON Schema
is ``docs/frame-schema.json``. Masks are full-frame, COCO compressed RLE (pycocotools),
polygons, or omitted::

    {"schema": "maskrcnn-streamer/frame/1", "source": "cam1", "frame": 0, "pts": 0.0,
     "width": 640, "height": 360,
     "instances": [{"label": 1, "class": "circle", "score": 0.98,
                    "box": [x1, y1, x2, y2], "mask": {"size": [360, 640], "counts": "..."}}]}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

from engines.rle_kernels import box_rle_counts, coco_rle_string
from streamer.encodings import MaskEncoding
from streamer.polygons import mask_to_polygons

if TYPE_CHECKING:  # types only: the schema (and `streamer config check`) must not import torch
    from engines.masks import BoxMask
    from engines.runner import Detections

SCHEMA_ID = "maskrcnn-streamer/frame/1"


def rle_counts(bm: BoxMask, height: int, width: int) -> npt.NDArray[np.int64]:
    """Uncompressed COCO RLE counts of ``bm`` placed in a ``height × width`` frame.

    COCO RLE runs over the frame in column-major order, alternating zeros and ones, starting
    with zeros (a leading 0 when pixel (0, 0) is set). Only the box is read: the zero runs
    between boxes and columns are arithmetic (:func:`engines.rle_kernels.box_rle_counts`).
    """
    return box_rle_counts(bm.mask, bm.x0, bm.y0, height, width)


def encode_box_rle(bm: BoxMask, height: int, width: int) -> dict[str, Any]:
    """One box-local mask → its full-frame COCO compressed RLE ``{"size": [H, W], "counts": str}``.

    Byte-identical to pycocotools' ``encode`` of the full-frame mask, without making it. The
    host paste already wrote them (``bm.coco_counts``) when ``bm`` was pasted in this frame size.
    """
    if bm.coco_counts is not None and bm.frame_size == (height, width):
        return {"size": [height, width], "counts": bm.coco_counts}
    text = coco_rle_string(rle_counts(bm, height, width))
    return {"size": [height, width], "counts": text.tobytes().decode("ascii")}


def encode_rle(masks: npt.NDArray[np.bool_]) -> list[dict[str, Any]]:
    """``bool[K, H, W]`` → K COCO compressed RLEs ``{"size": [H, W], "counts": str}`` (reference encoder)."""
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    rles = mask_utils.encode(fortran)
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def decode_rle(rle: dict[str, Any]) -> npt.NDArray[np.bool_]:
    """One COCO compressed RLE → ``bool[H, W]``."""
    coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]}
    return mask_utils.decode(coded).astype(bool)


def encode_polygons(mask: npt.NDArray[np.bool_]) -> list[list[float]]:
    """Outer contours of one ``bool[H, W]`` mask as flat ``[x0, y0, x1, y1, ...]`` pixel polygons."""
    return mask_to_polygons(mask)


def encode_box_polygons(bm: BoxMask) -> list[list[float]]:
    """:func:`encode_polygons` of a box-local mask, in frame coordinates (equal to the full-frame result)."""
    polygons = mask_to_polygons(bm.mask)
    for poly in polygons:
        poly[0::2] = [x + bm.x0 for x in poly[0::2]]
        poly[1::2] = [y + bm.y0 for y in poly[1::2]]
    return polygons


def rounded(values: npt.NDArray[np.floating], digits: int) -> list[Any]:
    """``round(v, digits)`` of every value, as (nested) lists of Python floats, bit for bit.

    Python's ``round`` rounds the exact binary value to ``digits`` decimals, ties to even, and
    returns the double nearest that decimal. For float32 values the same comes vectorized: ``v ×
    10^digits`` is exact in float64 (24 significant bits times at most 17 for ``digits <= 5``),
    ``rint`` rounds it to the integer ``n`` ties to even, and IEEE division returns the double
    nearest ``n / 10^digits``. Other dtypes take Python's ``round`` value by value.
    """
    if values.dtype == np.float32 and 0 <= digits <= 5:
        scale = float(10 ** digits)
        return (np.rint(values.astype(np.float64) * scale) / scale).tolist()
    if values.ndim == 1:
        return [round(v, digits) for v in values.tolist()]
    return [rounded(row, digits) for row in values]


def class_name(class_names: Sequence[str], label: int) -> str:
    """The name of class ``label``, or the label as text when the model names no such class."""
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def frame_message(
    source: str,
    frame_index: int,
    pts: float | None,
    det: Detections,
    masks: Sequence[BoxMask] | None,
    class_names: Sequence[str],
    encoding: MaskEncoding = "rle",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the frame message for one frame.

    ``masks`` are the box-local masks aligned with ``det`` (:meth:`Detections.box_masks`), or
    None when ``encoding`` is "none". ``extra`` adds keys (the daemon adds ``stream`` and
    ``capture_time``).
    """
    h, w = det.image_size
    if encoding == "rle" and masks is not None:
        mask_json: list[Any] = [encode_box_rle(m, h, w) for m in masks]
    elif encoding == "polygon" and masks is not None:
        mask_json = [{"polygons": encode_box_polygons(m)} for m in masks]
    else:
        mask_json = [None] * len(det)
    instances = []
    labels, scores, boxes = det.labels.tolist(), rounded(det.scores, 5), rounded(det.boxes, 2)
    for label, score, box, mask in zip(labels, scores, boxes, mask_json, strict=True):
        inst: dict[str, Any] = {
            "label": label,
            "class": class_name(class_names, label),
            "score": score,
            "box": box,
        }
        if mask is not None:
            inst["mask"] = mask
        instances.append(inst)
    msg: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "source": source,
        "frame": int(frame_index),
        "pts": None if pts is None else float(pts),
        "width": int(w),
        "height": int(h),
        "instances": instances,
    }
    if extra:
        msg.update(extra)
    return msg
