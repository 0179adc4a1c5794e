"""What the sink tests share: a real frame message, a sink reported on a registry, a sample of it.

- :func:`sample_message`: two detections on a 48x64 frame, masks pasted and RLE-encoded.
- :func:`watched`: a sink whose counters a collector of its own reports on a registry.
- :func:`sample`: one sample of a registry (0 when absent).
- :func:`wait_until`: poll a condition until it holds or a timeout passes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from engines.runner import Detections
from streamer.metrics import StreamerCollector
from streamer.schema import frame_message
from streamer.sinks import Sink

CLASSES = ("__background__", "circle", "square")


def sample_message(stream: str = "cam1", index: int = 0) -> dict[str, Any]:
    """A real frame message: two detections on a 48x64 frame, masks pasted and RLE-encoded."""
    yy, xx = np.mgrid[:28, :28]
    disc = (((yy - 13.5) ** 2 + (xx - 13.5) ** 2) < 12**2).astype(np.float32)
    det = Detections(
        boxes=np.array([[4, 4, 24, 30], [30, 10, 60, 40]], np.float32),
        scores=np.array([0.9, 0.7], np.float32),
        labels=np.array([1, 2], np.int64),
        mask_probs=np.stack([disc, np.ones((28, 28), np.float32)]),
        image_size=(48, 64),
    )
    return frame_message(stream, index, index / 25, det, det.box_masks(), CLASSES,
                         extra={"stream": stream, "capture_time": 1.0e9 + index})


def watched(sink: Sink, registry: CollectorRegistry) -> Sink:
    """``sink``, reported on ``registry`` by a collector of its own."""
    StreamerCollector(registry).watch_sink(sink)
    return sink


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())
