"""The shipped demo assets: the sample video and its per-frame COCO ground truth.

``streamer/assets/sample.mp4`` (640×360, 25 fps, 10 s, H.264) and ``sample_gt.json.gz`` come from
the scene generator of a source checkout: ``python3 -m tools.scenes.sample`` regenerates them.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path
from typing import Any


def sample_video_path() -> Path:
    """Path of the shipped sample video."""
    return Path(str(resources.files("streamer").joinpath("assets", "sample.mp4")))


def sample_ground_truth() -> dict[str, Any]:
    """COCO ground truth of the sample video (one image per frame, ``frame_index``/``pts`` keys)."""
    data = resources.files("streamer").joinpath("assets", "sample_gt.json.gz").read_bytes()
    gt: dict[str, Any] = json.loads(gzip.decompress(data))
    return gt
