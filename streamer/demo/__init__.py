"""The demo's shipped data and its scoring: the sample video, its ground truth, COCOeval.

The scene generator that made the sample lives in the source checkout (:mod:`tools.scenes`),
not in the installed package.
"""

from streamer.demo.assets import sample_ground_truth, sample_video_path

__all__ = ["sample_ground_truth", "sample_video_path"]
