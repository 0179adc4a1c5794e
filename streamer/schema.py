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

import json
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

from engines.runner import Detections
from streamer.polygons import mask_to_polygons

SCHEMA_ID = "maskrcnn-streamer/frame/1"
MaskEncoding = Literal["rle", "polygon", "none"]


def encode_rle(masks: npt.NDArray[np.bool_]) -> list[dict[str, Any]]:
    """``bool[K, H, W]`` → K COCO compressed RLEs ``{"size": [H, W], "counts": str}``."""
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


def frame_message(
    source: str,
    frame_index: int,
    pts: float | None,
    det: Detections,
    masks: npt.NDArray[np.bool_] | None,
    class_names: Sequence[str],
    encoding: MaskEncoding = "rle",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the frame message for one frame.

    ``masks`` is ``bool[K, H, W]`` (pasted, aligned with ``det``) or None when ``encoding`` is "none".
    ``extra`` adds keys (the daemon adds ``stream`` and ``capture_time``).
    """
    h, w = det.image_size
    if encoding == "rle" and masks is not None:
        mask_json: list[Any] = encode_rle(masks)
    elif encoding == "polygon" and masks is not None:
        mask_json = [{"polygons": encode_polygons(m)} for m in masks]
    else:
        mask_json = [None] * len(det)
    instances = []
    for i in range(len(det)):
        label = int(det.labels[i])
        inst: dict[str, Any] = {
            "label": label,
            "class": class_names[label] if 0 <= label < len(class_names) else str(label),
            "score": round(float(det.scores[i]), 5),
            "box": [round(float(v), 2) for v in det.boxes[i]],
        }
        if mask_json[i] is not None:
            inst["mask"] = mask_json[i]
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


def dumps(msg: dict[str, Any]) -> str:
    """Compact one-line JSON for a frame message."""
    return json.dumps(msg, separators=(",", ":"))
