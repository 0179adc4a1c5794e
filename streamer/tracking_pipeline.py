"""Tracking in the frame pipeline: one :class:`~streamer.tracking.Tracker` per stream, fed in frame order.

``streamer process`` tracks each video input with its own tracker (frame time: ``pts``); the
daemon's :class:`~streamer.inference.Publisher` calls :meth:`StreamTrackers.track` in its
ordered publish step, so each stream's tracker sees that stream's frames in frame order even
though batches are postprocessed on a pool of threads (tracking costs well under a millisecond
per frame, so it stays on the event loop; the publisher records its CPU time as
``stage_cpu_seconds_total{stage="track"}`` and the returned :class:`~streamer.tracking.TrackOutput`'s
counts in the stream's counters)::

    trackers = StreamTrackers(cfg.tracking, time_of=frame_time)
    out = trackers.track(frame, result)    # adds "track_id" to result.messages' instances

Reloads (SIGHUP): :meth:`drop` forgets a removed stream's tracker; :meth:`restart` makes a
changed stream start a fresh tracker at its first new frame (frames of the old source still in
flight finish on the old tracker). Track ids never repeat within a stream name for the life of
the process: a fresh tracker continues numbering after the last id handed out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engines.masks import BoxMask
from streamer.frames import Frame
from streamer.messages import FrameResult, add_track_ids
from streamer.tracking import Tracker, TrackOutput
from streamer.tracking_config import TrackingConfig

TimeOf = Callable[[Frame], "float | None"]


def pts_time(frame: Frame) -> float | None:
    """Frame time of file inputs: the presentation timestamp (s)."""
    return frame.pts


def capture_time(frame: Frame) -> float | None:
    """Frame time of live streams: when the frame was decoded (Unix s)."""
    return frame.capture_time


def track_result(tracker: Tracker, frame: Frame, result: FrameResult, t: float | None) -> TrackOutput:
    """Update ``tracker`` with ``result``'s candidates at time ``t``; add the ids to its messages."""
    cand = result.candidates if result.candidates is not None else result.detections
    published = (result.published if result.published is not None
                 else np.ones(len(cand), dtype=bool))
    masks: list[BoxMask | None] = [None] * len(cand)
    if result.masks is not None:
        for i, m in zip(np.flatnonzero(published).tolist(), result.masks, strict=True):
            masks[i] = m
    out = tracker.update(t, frame.index, cand.boxes, cand.scores, cand.labels, masks)
    add_track_ids(result, [None if i < 0 else int(i) for i in out.ids[published].tolist()])
    return out


class StreamTrackers:
    """The trackers of every stream, created at a stream's first frame."""

    def __init__(self, cfg: TrackingConfig, time_of: TimeOf = pts_time) -> None:
        self.cfg = cfg
        self.time_of = time_of
        """The frame time (s) a stream's tracker uses: pts for files, capture time for live streams."""
        self._trackers: dict[str, Tracker] = {}
        self._restart_at: dict[str, int] = {}
        self._next_id: dict[str, int] = {}

    def __contains__(self, stream: str) -> bool:
        return stream in self._trackers

    def track(self, frame: Frame, result: FrameResult) -> TrackOutput:
        """Track one frame of ``frame.stream`` (call in frame order per stream)."""
        return track_result(self._tracker(frame), frame, result, self.time_of(frame))

    def drop(self, stream: str) -> None:
        """Forget ``stream``'s tracker (a stream removed by a reload); its ids are not reused."""
        tracker = self._trackers.pop(stream, None)
        if tracker is not None:
            self._next_id[stream] = tracker.next_id
        self._restart_at.pop(stream, None)

    def restart(self, stream: str, first_index: int) -> None:
        """Start a new tracker for ``stream`` at its frame ``first_index`` (a changed source)."""
        self._restart_at[stream] = first_index

    def _tracker(self, frame: Frame) -> Tracker:
        name = frame.stream
        tracker = self._trackers.get(name)
        first = self._restart_at.get(name)
        if tracker is not None and first is not None and frame.index >= first:
            del self._restart_at[name]
            self.drop(name)
            tracker = None
        if tracker is None:
            tracker = Tracker(self.cfg, name)
            tracker.next_id = self._next_id.get(name, 1)
            self._trackers[name] = tracker
        return tracker
