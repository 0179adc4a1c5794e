"""Regenerate the shipped sample video and its ground truth into the package's assets folder.

``streamer/assets/sample.mp4`` is ``generate_video(path, seed=SAMPLE_SEED)`` (640×360, 25 fps,
10 s, H.264) and ``sample_gt.json.gz`` its COCO ground truth (gzip level 9)::

    python3 -m tools.scenes.sample
"""

from __future__ import annotations

import gzip
import json

from streamer.demo import sample_video_path
from tools.scenes.video import generate_video

SAMPLE_SEED = 424242


def main() -> None:
    out = sample_video_path()
    gt = generate_video(out, seed=SAMPLE_SEED)
    out.with_name("sample_gt.json.gz").write_bytes(gzip.compress(json.dumps(gt).encode(), 9))
    print(f"wrote {out} ({len(gt['images'])} frames, {len(gt['annotations'])} instances)")


if __name__ == "__main__":
    main()
