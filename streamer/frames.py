"""The one frame type every stage passes on: decoded by a source, batched, inferred, published."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame on its way to inference (``streamer run`` and ``streamer process``)."""

    stream: str
    """Configured stream name (``streamer process``: the input path)."""
    source: str
    """The source URL or path, credentials redacted (message key ``source``)."""
    index: int
    """Per-stream sequence number from 0 (live streams: continuing across reconnects and loops)."""
    pts: float | None
    """Presentation time in seconds; None for still images and frames without a timestamp."""
    capture_time: float
    """Unix time (s) when the frame was decoded: the start of end-to-end latency."""
    received: float
    """``time.monotonic()`` at decode, for the staleness budget."""
    image: npt.NDArray[np.uint8] = field(repr=False)
    """``uint8[H, W, 3]`` RGB, C-contiguous."""

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.image.shape[0]), int(self.image.shape[1])
