"""Multi-object tracking of one stream: stable ``track_id`` for the instances of consecutive frames.

A :class:`Tracker` sees one stream's frames in frame order (``update`` per frame) and answers,
for each detection, its track id or ``-1`` (no id: a detection not, or not yet, part of a
confirmed track; published as ``track_id: null``)::

    tracker = Tracker(TrackingConfig())
    out = tracker.update(t=frame.pts, index=frame.index, boxes=det.boxes, scores=det.scores,
                         labels=det.labels, masks=masks)          # masks: list[BoxMask | None]
    out.ids                                                        # int64 [K], -1 = no id

The algorithm (ByteTrack's two passes, with masks and frame time):

1. **Predict** every track to the frame's time ``t`` (seconds) with a constant-velocity Kalman
   filter on the box ``(cx, cy, w, h)``: four independent position/velocity filters per track,
   vectorised over tracks (:mod:`streamer.tracking_kalman`). Motion is in px/s, so a gap of
   dropped frames moves a track as far as its object moved.
2. **First pass**: detections scoring ``>= high_score`` against every live track (confirmed,
   tentative, or lost within ``max_age_s``). Similarity is the box IoU of the prediction and the
   detection; where a track or detection has more than one candidate (crossing or overlapping
   objects) it is the mean of box IoU and mask IoU (the track's last mask moved by the
   predicted motion). A class change costs 20 %. Optimal assignment
   (``scipy.optimize.linear_sum_assignment``), pairs below ``match_iou`` rejected.
3. **Second pass**: detections in ``[low_score, high_score)`` against the confirmed tracks still
   unmatched, by box IoU ``>= low_match_iou``: a briefly weak detection keeps its track.
4. Unmatched tentative tracks end; confirmed tracks unmatched for more than ``max_age_s`` end.
   Unmatched high-score detections start tentative tracks. A track matched in ``min_hits``
   consecutive frames is confirmed and takes the next id (1, 2, ... per tracker, never reused).

**Time.** ``t`` is the frame's timestamp in seconds (file pts, or capture time for live
streams). A missing timestamp (None) or one that does not increase is replaced by the previous
one plus the frame-index difference times the last seen frame interval (a warning is logged
once per tracker). A timestamp more than ``max_age_s`` *backwards* is a discontinuity (a
looping file restarted, a stream restarted its clock): every track ends and ids continue.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from engines.masks import BoxMask
from streamer import tracking_kernels as kernels
from streamer.tracking_config import TrackingConfig
from streamer.tracking_kalman import BoxKalman

log = logging.getLogger("streamer.tracking")

DEFAULT_FRAME_INTERVAL_S = 0.04
"""Frame interval assumed before two timestamps were seen (25 fps)."""
CANDIDATE_IOU = 0.05
"""Box IoU above which a track and a detection are candidates of each other (mask IoU needed
where a row or column of the matrix has two or more)."""
MAX_MASK_PAIRS = 256
"""At most this many ambiguous pairs per frame get a mask IoU (those of highest box IoU; the
rest keep their box IoU): bounds the cost on crowded frames (100 overlapping instances)."""
CLASS_CHANGE_FACTOR = 0.8
"""Similarity multiplier when a detection's class differs from its track's."""


@dataclass(frozen=True)
class TrackOutput:
    """What one ``update`` decided."""

    ids: npt.NDArray[np.int64]
    """``[K]`` track id of each detection, ``-1`` for none (unconfirmed, low-score unmatched)."""
    started: int
    """Tracks confirmed (given an id) at this frame."""
    active: int
    """Confirmed tracks alive after this frame (detected now, or lost for at most ``max_age_s``)."""


def box_iou(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """IoU of ``a`` ``[N, 4]`` and ``b`` ``[K, 4]`` boxes ``(x1, y1, x2, y2)``: ``[N, K]`` in [0, 1]."""
    return kernels.box_iou(np.ascontiguousarray(a, dtype=np.float64).reshape(-1, 4),
                           np.ascontiguousarray(b, dtype=np.float64).reshape(-1, 4))


def shifted_mask_iou(a: BoxMask, a_area: int, dx: int, dy: int, b: BoxMask, b_area: int) -> float:
    """IoU of mask ``a`` moved by ``(dx, dy)`` px and mask ``b`` (box-local masks, frame coordinates).

    Counted on the masks' COCO runs where the host paste left them (both pasted in one frame
    size: :func:`~streamer.tracking_kernels.runs_overlap`), else on their pixels.
    """
    if a.runs is not None and b.runs is not None and a.frame_size is not None and a.frame_size == b.frame_size:
        inter = int(kernels.runs_overlap(a.runs, dx, dy, b.runs, a.frame_size[0]))
    else:
        ah, aw = a.mask.shape
        bh, bw = b.mask.shape
        ax0, ay0 = a.x0 + dx, a.y0 + dy
        x0, y0 = max(ax0, b.x0), max(ay0, b.y0)
        x1, y1 = min(ax0 + aw, b.x0 + bw), min(ay0 + ah, b.y0 + bh)
        inter = 0
        if x1 > x0 and y1 > y0:
            inter = int(np.count_nonzero(a.mask[y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0]
                                         & b.mask[y0 - b.y0:y1 - b.y0, x0 - b.x0:x1 - b.x0]))
    union = a_area + b_area - inter
    return inter / union if union > 0 else 0.0


def assign(sim: npt.NDArray[np.float64], threshold: float) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Rows and columns (``int64[m]`` each, rows ascending) of the maximum-similarity assignment,
    the pairs with ``sim >= threshold``."""
    if sim.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = linear_sum_assignment(sim, maximize=True)
    ok = sim[rows, cols] >= threshold
    return rows[ok].astype(np.int64), cols[ok].astype(np.int64)


class Tracker:
    """The tracks of one stream. Not thread-safe: call ``update`` in frame order from one place."""

    def __init__(self, cfg: TrackingConfig, name: str = "") -> None:
        self.cfg = cfg
        self.name = name
        """Stream name, for log lines."""
        self.kf = BoxKalman()
        self.ids = np.zeros(0, dtype=np.int64)
        """``[N]`` id of each track, -1 while tentative."""
        self.hits = np.zeros(0, dtype=np.int64)
        """``[N]`` consecutive frames matched (tentative) / total (confirmed)."""
        self.last_seen = np.zeros(0)
        """``[N]`` time (s) of the last matched detection."""
        self.labels = np.zeros(0, dtype=np.int64)
        self.masks: list[BoxMask | None] = []
        """Last mask of each track (None: none seen), taken at ``mask_ref`` centre."""
        self.mask_areas = np.zeros(0, dtype=np.int64)
        self.mask_ref = np.zeros((0, 2))
        """``[N, 2]`` box centre ``(cx, cy)`` px where the track's mask was taken."""
        self.next_id = 1
        self.started_total = 0
        self._t: float | None = None
        self._index: int | None = None
        self._interval = DEFAULT_FRAME_INTERVAL_S
        self._warned_clock = False

    # -- public ---------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Confirmed tracks alive."""
        return int(np.count_nonzero(self.ids >= 0))

    def end_all(self) -> None:
        """End every track (a discontinuity); ids keep counting up."""
        keep = np.zeros(len(self.ids), dtype=bool)
        self._keep(keep)

    def update(self, t: float | None, index: int, boxes: npt.NDArray[np.floating],
               scores: npt.NDArray[np.floating], labels: npt.NDArray[np.integer],
               masks: Sequence[BoxMask | None] | None = None) -> TrackOutput:
        """Associate one frame's detections (``boxes`` ``[K, 4]`` px, ``scores`` ``[K]``, ``labels``
        ``[K]``, ``masks`` K box-local masks or None each) with the tracks; their ids.

        ``t`` is the frame time in seconds (None: unknown), ``index`` the stream's frame number.
        """
        k = len(boxes)
        if len(scores) != k or len(labels) != k or (masks is not None and len(masks) != k):
            raise ValueError(f"update needs one score, label and mask per box: {k} boxes, {len(scores)} "
                             f"scores, {len(labels)} labels, {'no' if masks is None else len(masks)} masks")
        now = self._clock(t, index)
        dets = np.asarray(boxes, dtype=np.float64).reshape(k, 4)
        scores = np.asarray(scores, dtype=np.float64)
        labs: npt.NDArray[np.int64] = np.asarray(labels, dtype=np.int64)
        det_masks: list[BoxMask | None] = list(masks) if masks is not None else [None] * k
        det_areas = [m.area if m is not None else 0 for m in det_masks]
        out = np.full(k, -1, dtype=np.int64)
        self._keep(now - self.last_seen <= self.cfg.max_age_s)  # tracks not seen for too long end

        pred = self.kf.boxes()
        high = np.flatnonzero(scores >= self.cfg.high_score)
        low = np.flatnonzero((scores >= self.cfg.low_score) & (scores < self.cfg.high_score))
        matched_track = np.zeros(len(self.ids), dtype=bool)
        rows = first = np.zeros(0, np.int64)  # track rows; first: their detections, first pass
        if len(self.ids) and len(high):
            sim = self._similarity(pred, dets[high], labs[high], [det_masks[i] for i in high],
                                   [det_areas[i] for i in high])
            rows, c = assign(sim, self.cfg.match_iou)
            first = high[c]
            matched_track[rows] = True
        cols = first
        rest = np.flatnonzero(~matched_track & (self.ids >= 0))
        if len(rest) and len(low):
            r, c = assign(box_iou(pred[rest], dets[low]), self.cfg.low_match_iou)
            rows, cols = np.concatenate([rows, rest[r]]), np.concatenate([first, low[c]])
            matched_track[rest[r]] = True

        started = 0
        if len(rows):
            self.kf.update(rows, dets[cols])
            with_mask = np.array([det_masks[d] is not None for d in cols.tolist()], dtype=bool)
            started, self.next_id = kernels.apply_matches(
                rows, cols, with_mask, dets, labs, np.asarray(det_areas, dtype=np.int64), now, self.last_seen,
                self.hits, self.labels, self.mask_areas, self.mask_ref, self.ids, self.cfg.min_hits,
                self.next_id, out)
            for row, d in zip(rows[with_mask].tolist(), cols[with_mask].tolist(), strict=True):
                self.masks[row] = det_masks[d]

        self._keep(matched_track | (self.ids >= 0))  # unmatched tentative tracks end
        taken = np.zeros(k, dtype=bool)
        taken[first] = True  # detections matched in the first pass
        fresh = high[~taken[high]]
        if len(fresh):
            self._start(now, dets[fresh], labs[fresh], [det_masks[d] for d in fresh.tolist()],
                        [det_areas[d] for d in fresh.tolist()])
            if self.cfg.min_hits <= 1:
                new_rows = np.arange(len(self.ids) - len(fresh), len(self.ids))
                self.ids[new_rows] = np.arange(self.next_id, self.next_id + len(fresh))
                out[fresh] = self.ids[new_rows]
                self.next_id += len(fresh)
                started += len(fresh)
        self.started_total += started
        return TrackOutput(out, started, self.active)

    # -- internals ------------------------------------------------------------------------------

    def _clock(self, t: float | None, index: int) -> float:
        """The frame time to use, predicting every track to it (see the module docstring)."""
        last_t, last_index = self._t, self._index
        if last_t is None or last_index is None:
            now = 0.0 if t is None else float(t)
            if t is None:
                self._warn_clock(f"frame {index} has no timestamp; timing by frame index "
                                 f"({self._interval * 1000:.0f} ms per frame)")
        elif t is not None and t < last_t - self.cfg.max_age_s:
            log.warning("tracking %s: frame %d time %.3f s is %.3f s before the previous frame: a "
                        "discontinuity, %d tracks end", self.name or "(stream)", index, t, last_t - t,
                        len(self.ids))
            self.end_all()
            now = float(t)
        else:
            steps = max(1, index - last_index)
            if t is None or t <= last_t:
                self._warn_clock(f"frame {index} time {t} does not follow the previous frame's "
                                 f"{last_t:.3f} s; timing by frame index")
                now = last_t + steps * self._interval
            else:
                now = float(t)
                self._interval = (now - last_t) / steps
        if last_t is not None and now > last_t:
            self.kf.predict(now - last_t)
        self._t, self._index = now, index
        return now

    def _warn_clock(self, message: str) -> None:
        if not self._warned_clock:
            self._warned_clock = True
            log.warning("tracking %s: %s (warned once)", self.name or "(stream)", message)

    def _similarity(self, pred: npt.NDArray[np.float64], dets: npt.NDArray[np.float64],
                    labels: npt.NDArray[np.int64], masks: list[BoxMask | None],
                    areas: list[int]) -> npt.NDArray[np.float64]:
        """``[N, K]`` similarity of the tracks' predicted boxes and the detections."""
        sim = kernels.box_iou(pred, dets)
        rows, cols, dx, dy = kernels.ambiguous_pairs(sim, pred, self.mask_ref, CANDIDATE_IOU, MAX_MASK_PAIRS)
        m_iou = np.zeros(len(rows))
        has = np.zeros(len(rows), dtype=bool)
        for p, (r, c, sx, sy) in enumerate(zip(rows.tolist(), cols.tolist(), dx.tolist(), dy.tolist(), strict=True)):
            tm, dm = self.masks[r], masks[c]
            if tm is not None and dm is not None:
                m_iou[p] = shifted_mask_iou(tm, int(self.mask_areas[r]), sx, sy, dm, areas[c])
                has[p] = True
        kernels.blend_mask_iou(sim, rows, cols, m_iou, has, self.labels, labels, CLASS_CHANGE_FACTOR)
        return sim

    def _start(self, now: float, boxes: npt.NDArray[np.float64], labels: npt.NDArray[np.int64],
               masks: list[BoxMask | None], areas: list[int]) -> None:
        n = len(boxes)
        self.kf.add(boxes)
        self.ids = np.concatenate([self.ids, np.full(n, -1, dtype=np.int64)])
        self.hits = np.concatenate([self.hits, np.ones(n, dtype=np.int64)])
        self.last_seen = np.concatenate([self.last_seen, np.full(n, now)])
        self.labels = np.concatenate([self.labels, labels])
        self.masks.extend(masks)
        self.mask_areas = np.concatenate([self.mask_areas, np.asarray(areas, dtype=np.int64)])
        self.mask_ref = np.concatenate([self.mask_ref, (boxes[:, :2] + boxes[:, 2:]) / 2])

    def _keep(self, keep: npt.NDArray[np.bool_]) -> None:
        if keep.all():
            return
        self.kf.keep(keep)
        self.ids, self.hits, self.last_seen = self.ids[keep], self.hits[keep], self.last_seen[keep]
        self.labels, self.mask_areas, self.mask_ref = self.labels[keep], self.mask_areas[keep], self.mask_ref[keep]
        self.masks = [m for m, k in zip(self.masks, keep.tolist(), strict=True) if k]
