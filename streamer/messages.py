"""Detections of a frame → its published frame messages: the one postprocessing step.

Used by the daemon's publisher (:mod:`streamer.inference`), by ``streamer process`` and by the
evaluation tools, so that every path publishes the same bytes for the same detections::

    result = frame_result(frame, detections, spec)
    result.messages["rle"]        # the frame message (docs/frame-schema.json) with RLE masks
    result.masks                  # list[BoxMask]: box-local binary masks of result.detections
    add_track_ids(result, ids)    # tracking (streamer.tracking_pipeline): "track_id" per instance

Steps: drop instances a runner should never return (NaN/inf or inverted boxes; counted by
reason in ``result.dropped``), keep ``score >= score_threshold``, paste the kept instances'
masks box-locally (:func:`engines.masks.paste_boxes`, or the runner's own device paste), then
encode each requested mask encoding from the box-local masks. Nothing here allocates a
full-frame array per instance.

Tracking runs after this step, in frame order per stream (:mod:`streamer.tracking_pipeline`):
it reads ``result.candidates`` (every valid instance, also those below the threshold, for
the tracker's low-score pass) and :func:`add_track_ids` adds ``track_id`` to the instances of
every message already built. Without tracking, the messages are exactly those built here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.masks import BoxMask
from engines.runner import Detections
from streamer.encodings import MaskEncoding
from streamer.frames import Frame
from streamer.schema import frame_message


@dataclass(frozen=True)
class MessageSpec:
    """How detections become frame messages."""

    class_names: tuple[str, ...]
    encodings: frozenset[MaskEncoding]
    """One message per encoding the consumers need."""
    score_threshold: float
    """Instances scoring below this are not published, in [0, 1]."""
    mask_threshold: float = 0.5
    """Mask pixels with probability ``> mask_threshold`` are set."""
    live: bool = True
    """Add ``stream`` and ``capture_time`` to each message (the daemon's messages)."""
    box: str | None = None
    """Live messages also get ``"box": box`` (the daemon's fleet identity, ``StreamerConfig.box_name``)."""


@dataclass
class FrameResult:
    """A frame's published form."""

    detections: Detections
    """The instances published (valid, ``score >= score_threshold``)."""
    masks: list[BoxMask] | None
    """Their box-local masks; None when no encoding needed them and none were asked for."""
    messages: dict[MaskEncoding, dict[str, Any]]
    """The frame message in each encoding of the spec."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Instances dropped as invalid, by reason (``nonfinite``, ``inverted``); only non-zero counts."""
    candidates: Detections | None = None
    """Every valid instance, published or not (the tracker's second pass uses the low-score ones)."""
    published: npt.NDArray[np.bool_] | None = None
    """``bool[len(candidates)]``: which candidates are ``detections`` (``score >= score_threshold``)."""
    track_ids: list[int | None] | None = None
    """Track id of each published instance (None: no id yet) once tracked; None when untracked."""


def add_track_ids(result: FrameResult, ids: Sequence[int | None]) -> None:
    """Record ``ids`` (one per published instance) and add ``"track_id"`` to each message's
    instances, after ``"box"`` (before ``"mask"``)."""
    if len(ids) != len(result.detections):
        raise ValueError(f"add_track_ids needs one id per published instance ({len(result.detections)}), "
                         f"got {len(ids)}")
    result.track_ids = list(ids)
    for msg in result.messages.values():
        for inst, tid in zip(msg["instances"], result.track_ids, strict=True):
            mask = inst.pop("mask", None)  # re-inserted so that "track_id" precedes it
            inst["track_id"] = tid
            if mask is not None:
                inst["mask"] = mask


def valid_detections(det: Detections) -> tuple[Detections, dict[str, int]]:
    """``det`` without the instances :meth:`Detections.invalid` flags, and the count per reason."""
    flags = det.invalid()
    bad = np.zeros(len(det), dtype=bool)
    counts: dict[str, int] = {}
    for reason, flagged in flags.items():
        fresh = flagged & ~bad  # an instance counts once, under its first reason
        if fresh.any():
            counts[reason] = int(fresh.sum())
        bad |= flagged
    return (det.select(~bad) if bad.any() else det), counts


def frame_result(frame: Frame, det: Detections, spec: MessageSpec, need_masks: bool = False) -> FrameResult:
    """The messages of ``frame`` for ``det`` (``need_masks``: also paste when no encoding needs masks)."""
    valid, dropped = valid_detections(det)
    published = valid.scores >= spec.score_threshold
    kept = valid if published.all() else valid.select(published)  # = valid.filter(spec.score_threshold)
    masks = None
    if need_masks or spec.encodings - {"none"}:
        masks = kept.box_masks(spec.mask_threshold)
    extra: dict[str, Any] | None = None
    if spec.live:
        extra = {"stream": frame.stream, "capture_time": round(frame.capture_time, 6)}
        if spec.box is not None:
            extra["box"] = spec.box
    messages = {
        enc: frame_message(frame.source, frame.index, frame.pts, kept, None if enc == "none" else masks,
                           spec.class_names, enc, extra)
        for enc in spec.encodings
    }
    return FrameResult(kept, masks, messages, dropped, valid, published)


def batch_results(frames: Sequence[Frame], dets: Sequence[Detections], spec: MessageSpec,
                  need_masks: bool = False) -> list[FrameResult]:
    """:func:`frame_result` of each frame of a batch."""
    if len(dets) != len(frames):
        raise RuntimeError(f"the runner returned {len(dets)} detections for {len(frames)} frames; "
                           "a Runner must return one per frame")
    return [frame_result(f, d, spec, need_masks) for f, d in zip(frames, dets, strict=True)]
