"""The shipped demo assets: the sample video and its per-frame COCO ground truth.

``streamer/assets/sample.mp4`` is ``generate_video(path, seed=SAMPLE_SEED)`` (640×360, 25 fps,
10 s, H.264); regenerate it bit-for-bit-equivalently with ``python -m streamer.demo.assets``.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path
from typing import Any

SAMPLE_SEED = 424242


def sample_video_path() -> Path:
    """Path of the shipped sample video."""
    return Path(str(resources.files("streamer").joinpath("assets", "sample.mp4")))


def sample_ground_truth() -> dict[str, Any]:
    """COCO ground truth of the sample video (one image per frame, ``frame_index``/``pts`` keys)."""
    data = resources.files("streamer").joinpath("assets", "sample_gt.json.gz").read_bytes()
    gt: dict[str, Any] = json.loads(gzip.decompress(data))
    return gt


def main() -> None:
    """Regenerate the sample video and its ground truth into the package's assets folder."""
    from streamer.demo.video import generate_video

    out = sample_video_path()
    gt = generate_video(out, seed=SAMPLE_SEED)
    out.with_name("sample_gt.json.gz").write_bytes(gzip.compress(json.dumps(gt).encode(), 9))
    print(f"wrote {out} ({len(gt['images'])} frames, {len(gt['annotations'])} instances)")


if __name__ == "__main__":
    main()
