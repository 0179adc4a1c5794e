"""The ``[tracking]`` configuration section (``streamer run``; ``streamer process`` uses its defaults).

Kept apart from :mod:`streamer.tracking` so that validating a config file imports no numpy/scipy.
``config/streamer.toml`` documents each key; :mod:`streamer.tracking` explains the algorithm.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrackingConfig(BaseModel):
    """Per-stream multi-object tracking: every published instance gets a ``track_id``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Run a tracker per stream and publish ``track_id`` (false: messages as without tracking)."""
    high_score: float = Field(default=0.5, ge=0, le=1)
    """Detections scoring at least this are associated first and may start tracks."""
    low_score: float = Field(default=0.1, ge=0, le=1)
    """Detections in ``[low_score, high_score)`` only extend existing tracks (second pass)."""
    match_iou: float = Field(default=0.2, gt=0, le=1)
    """First pass: least overlap (box IoU, averaged with mask IoU where ambiguous) to associate."""
    low_match_iou: float = Field(default=0.5, gt=0, le=1)
    """Second pass (low-score detections): least box IoU to associate."""
    min_hits: int = Field(default=2, ge=1, le=100)
    """Frames a new track must be detected in, consecutively, before it gets an id."""
    max_age_s: float = Field(default=1.0, gt=0)
    """A track not detected for this long ends (seconds of frame time, not frames)."""

    @model_validator(mode="after")
    def _low_below_high(self) -> TrackingConfig:
        if self.low_score > self.high_score:
            raise ValueError(f"low_score ({self.low_score}) must not exceed high_score ({self.high_score})")
        return self
