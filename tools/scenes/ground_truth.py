"""COCO-format ground truth for generated scenes: images, visible-instance masks as RLE, categories.

The ground-truth dict is the standard COCO instances layout (``images``, ``annotations``,
``categories``) with compressed-RLE segmentations whose ``counts`` are ``str`` so it dumps to JSON;
:func:`streamer.demo.coco.evaluate` scores detections against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

from tools.scenes.shapes import CLASS_NAMES

EVAL_SEED_BASE = 1_000_000
"""Held-out evaluation images use seeds ``EVAL_SEED_BASE + i``; training seeds are disjoint."""


def categories() -> list[dict[str, Any]]:
    """COCO ``categories`` for the shape classes (ids 1..4; background is not a category)."""
    return [
        {"id": i, "name": name, "supercategory": "shape"}
        for i, name in enumerate(CLASS_NAMES)
        if i > 0
    ]


def rle_json(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """One ``bool[H, W]`` mask → compressed RLE ``{"size": [H, W], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": rle["counts"].decode("ascii"),
    }


def annotations_for(
    image_id: int,
    masks: npt.NDArray[np.bool_],
    labels: npt.NDArray[np.int64],
    first_id: int,
    track_ids: npt.NDArray[np.int64] | None = None,
) -> list[dict[str, Any]]:
    """COCO annotations for one image's visible masks ``bool[K, H, W]`` and labels ``[K]``.

    ``bbox`` is ``[x, y, w, h]`` of the mask's pixels, ``area`` its pixel count; ids run from
    ``first_id``. Every annotation has ``iscrowd`` 0, and ``track_id`` when ``track_ids`` ``[K]``
    is given (the same object keeps its id across video frames).
    """
    anns = []
    for k, (mask, label) in enumerate(zip(masks, labels, strict=True)):
        rle = rle_json(mask)
        coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        anns.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": int(label),
                "segmentation": rle,
                "area": float(mask_utils.area(coded)),
                "bbox": [float(v) for v in mask_utils.toBbox(coded)],
                "iscrowd": 0,
            }
        )
        if track_ids is not None:
            anns[-1]["track_id"] = int(track_ids[k])
    return anns


class GroundTruthBuilder:
    """Accumulates images and their visible-instance masks into one COCO ground-truth dict."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(
        self,
        masks: npt.NDArray[np.bool_],
        labels: npt.NDArray[np.int64],
        file_name: str = "",
        extra: dict[str, Any] | None = None,
        track_ids: npt.NDArray[np.int64] | None = None,
    ) -> int:
        """Add one image (``masks`` bool ``[K, H, W]``); returns its image id (0, 1, ...).

        ``extra`` adds keys to the image entry; ``track_ids`` ``[K]`` adds ``track_id`` to each
        annotation.
        """
        image_id = len(self.images)
        height, width = masks.shape[1:]
        entry: dict[str, Any] = {
            "id": image_id,
            "width": int(width),
            "height": int(height),
            "file_name": file_name,
        }
        entry.update(extra or {})
        self.images.append(entry)
        self.annotations += annotations_for(
            image_id, masks, labels, first_id=len(self.annotations) + 1, track_ids=track_ids
        )
        return image_id

    def to_dict(self, info: dict[str, Any] | None = None) -> dict[str, Any]:
        """The COCO ground truth: ``info``, ``images``, ``annotations``, ``categories``."""
        return {
            "info": info or {},
            "images": self.images,
            "annotations": self.annotations,
            "categories": categories(),
        }
