"""Tracker logic on synthetic detections: confirmation, ids never reused, gaps, time, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from engines.masks import BoxMask
from streamer.tracking import Tracker, box_iou, shifted_mask_iou
from streamer.tracking_config import TrackingConfig


def box(cx: float, cy: float, size: float = 40.0) -> list[float]:
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


def step(tr: Tracker, t: float | None, index: int, boxes: list[list[float]], scores: list[float] | None = None,
         labels: list[int] | None = None) -> list[int]:
    k = len(boxes)
    out = tr.update(t, index, np.array(boxes, dtype=np.float32).reshape(k, 4),
                    np.array(scores if scores is not None else [0.9] * k, dtype=np.float32),
                    np.array(labels if labels is not None else [1] * k, dtype=np.int64))
    return out.ids.tolist()


def test_confirmed_after_min_hits_unconfirmed_get_no_id() -> None:
    tr = Tracker(TrackingConfig(min_hits=3))
    assert step(tr, 0.00, 0, [box(100, 100)]) == [-1]
    assert step(tr, 0.04, 1, [box(102, 100)]) == [-1]
    assert step(tr, 0.08, 2, [box(104, 100)]) == [1]
    assert step(tr, 0.12, 3, [box(106, 100)]) == [1]
    assert tr.started_total == 1 and tr.active == 1


def test_one_frame_false_positive_gets_no_id_and_burns_none() -> None:
    tr = Tracker(TrackingConfig(min_hits=2))
    step(tr, 0.0, 0, [box(300, 300)])          # a one-frame blip
    assert step(tr, 0.04, 1, []) == []
    assert step(tr, 0.08, 2, [box(50, 50)]) == [-1]
    assert step(tr, 0.12, 3, [box(52, 50)]) == [1]  # the first confirmed track takes id 1


def test_ids_never_reused_after_tracks_end() -> None:
    tr = Tracker(TrackingConfig(min_hits=1, max_age_s=0.2))
    assert step(tr, 0.0, 0, [box(100, 100), box(300, 100)]) == [1, 2]
    assert step(tr, 1.0, 25, []) == []               # both aged out
    assert tr.active == 0
    assert step(tr, 1.04, 26, [box(100, 100)]) == [3]  # same place, new object: a new id


def test_gap_shorter_than_max_age_keeps_id_with_motion_prediction() -> None:
    tr = Tracker(TrackingConfig(min_hits=2, max_age_s=1.0))
    ids = [step(tr, i * 0.04, i, [box(100 + 100 * i * 0.04, 100)]) for i in range(5)]  # 100 px/s
    assert ids[-1] == [1]
    # 0.6 s of no detection (dropped frames or an occlusion); the object moved 60 px meanwhile
    assert step(tr, 0.76, 19, [box(100 + 100 * 0.76, 100)]) == [1]


def test_dropped_frames_are_timed_by_pts_not_frame_count() -> None:
    """A third of the frames missing: the prediction uses the time elapsed, so the box still overlaps."""
    tr = Tracker(TrackingConfig(min_hits=2))
    seen = []
    for i in range(60):
        if i % 3 == 2:
            continue
        t = i * 0.04
        seen += step(tr, t, i, [box(50 + 300 * t, 100, size=20)])  # 12 px per frame, 20 px box
    assert set(seen[1:]) == {1}


def test_gap_longer_than_max_age_ends_tracks() -> None:
    tr = Tracker(TrackingConfig(min_hits=1, max_age_s=0.5))
    assert step(tr, 0.0, 0, [box(100, 100)]) == [1]
    assert step(tr, 0.6, 1, [box(100, 100)]) == [2]  # a reconnect after 0.6 s: a new track


def test_low_score_detection_extends_a_track_but_starts_none() -> None:
    cfg = TrackingConfig(min_hits=1, high_score=0.5, low_score=0.1)
    tr = Tracker(cfg)
    assert step(tr, 0.0, 0, [box(100, 100)], [0.9]) == [1]
    assert step(tr, 0.04, 1, [box(100, 100)], [0.3]) == [1]       # second pass keeps the id
    assert step(tr, 0.08, 2, [box(400, 100)], [0.3]) == [-1]      # low score alone: no new track
    assert step(tr, 0.12, 3, [box(100, 100)], [0.05]) == [-1]     # below low_score: ignored
    assert tr.started_total == 1


def test_crossing_objects_keep_their_ids() -> None:
    tr = Tracker(TrackingConfig(min_hits=1))
    ids = []
    for i in range(40):
        t = i * 0.04
        a, b = box(100 + 250 * t, 100), box(350 - 250 * t, 100)  # meet at t = 0.5 s
        ids.append(step(tr, t, i, [a, b]))
    assert all(pair == [1, 2] for pair in ids)


def test_overlapping_identical_objects_are_told_apart_by_masks() -> None:
    """Two equal boxes overlapping; the masks (a left and a right half-disc) say which is which."""
    tr = Tracker(TrackingConfig(min_hits=1))
    yy, xx = np.mgrid[:40, :40]
    left = BoxMask(0, 0, np.ascontiguousarray((xx < 20) & ((xx - 20) ** 2 + (yy - 20) ** 2 < 400)))
    right = BoxMask(0, 0, np.ascontiguousarray((xx >= 20) & ((xx - 20) ** 2 + (yy - 20) ** 2 < 400)))
    for i in range(6):
        dx = 10 + i
        masks = [BoxMask(dx, 10, left.mask), BoxMask(dx + 5, 10, right.mask)]
        boxes = np.array([[dx, 10, dx + 40, 50], [dx + 5, 10, dx + 45, 50]], dtype=np.float32)
        order = [0, 1] if i % 2 == 0 else [1, 0]  # detections come in either order
        out = tr.update(i * 0.04, i, boxes[order], np.array([0.9, 0.9]), np.array([1, 1]),
                        [masks[j] for j in order])
        got = dict(zip(order, out.ids.tolist(), strict=True))
        assert got == {0: 1, 1: 2}


def test_missing_timestamps_fall_back_to_frame_index(caplog: pytest.LogCaptureFixture) -> None:
    tr = Tracker(TrackingConfig(min_hits=1), "cam1")
    with caplog.at_level(logging.WARNING, "streamer.tracking"):
        ids = [step(tr, None, i, [box(100 + 2 * i, 100)]) for i in range(10)]
    assert {i[0] for i in ids} == {1}
    assert sum("no timestamp" in r.message for r in caplog.records) == 1  # warned once


def test_timestamps_going_backwards_never_crash() -> None:
    tr = Tracker(TrackingConfig(min_hits=1, max_age_s=1.0))
    assert step(tr, 5.0, 0, [box(100, 100)]) == [1]
    assert step(tr, 4.99, 1, [box(101, 100)]) == [1]   # a small step back: timed by frame index
    assert step(tr, 0.0, 2, [box(102, 100)]) == [2]    # a loop restarted: a discontinuity, tracks end


def test_zero_detections_for_many_frames_then_hundred() -> None:
    tr = Tracker(TrackingConfig(min_hits=1, max_age_s=0.5))
    for i in range(50):
        assert step(tr, i * 0.04, i, []) == []
    rng = np.random.default_rng(0)
    centres = rng.uniform(20, 620, size=(100, 2))
    boxes = [box(x, y, 10) for x, y in centres]
    first = step(tr, 2.0, 50, boxes)
    second = step(tr, 2.04, 51, boxes)
    assert sorted(first) == list(range(1, 101)) and second == first


def test_update_rejects_misaligned_input() -> None:
    tr = Tracker(TrackingConfig())
    with pytest.raises(ValueError, match="one score, label and mask per box"):
        tr.update(0.0, 0, np.zeros((2, 4)), np.zeros(1), np.zeros(2, dtype=np.int64))


def test_config_rejects_low_above_high() -> None:
    with pytest.raises(ValueError, match=r"low_score \(0.6\) must not exceed high_score \(0.5\)"):
        TrackingConfig(low_score=0.6, high_score=0.5)


def test_box_and_mask_iou() -> None:
    a = np.array([[0, 0, 10, 10]], dtype=np.float64)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], dtype=np.float64)
    assert np.allclose(box_iou(a, b), [[50 / 150, 0.0]])
    m = BoxMask(0, 0, np.ones((10, 10), dtype=bool))
    assert shifted_mask_iou(m, 100, 5, 0, m, 100) == pytest.approx(50 / 150)
    assert shifted_mask_iou(m, 100, 0, 0, BoxMask(3, 3, np.ones((0, 0), dtype=bool)), 0) == 0.0


def test_shipped_config_documents_every_tracking_key_with_its_default() -> None:
    import re
    import tomllib
    from pathlib import Path

    from streamer.config import ConfigError, validate_config

    text = (Path(__file__).resolve().parents[2] / "config" / "streamer.toml").read_text()
    block = text[text.index("# [tracking]"):].split("\n\n")[0]
    data = tomllib.loads("\n".join(re.sub(r"^# ?", "", line) for line in block.splitlines()))
    assert set(data["tracking"]) == set(TrackingConfig.model_fields)
    assert validate_config(data).tracking == TrackingConfig()
    with pytest.raises(ConfigError) as err:
        validate_config({"tracking": {"max_age": 2}})
    assert "tracking.max_age = 2: unknown key; allowed keys here: enabled, high_score" in str(err.value)
    with pytest.raises(ConfigError, match=r"tracking.max_age_s = 0: Input should be greater than 0"):
        validate_config({"tracking": {"max_age_s": 0}})
