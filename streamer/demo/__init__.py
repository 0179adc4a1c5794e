"""Synthetic demo data: shape scenes, videos with per-frame COCO ground truth."""

from streamer.demo.assets import sample_ground_truth, sample_video_path

__all__ = ["sample_ground_truth", "sample_video_path"]
