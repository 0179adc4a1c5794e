"""Synthetic demo data: shape scenes, videos with per-frame COCO ground truth."""
