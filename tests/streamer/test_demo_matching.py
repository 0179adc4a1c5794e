"""Instance matching for the demo model's end-to-end criteria, and edge-cut scene generation."""

from __future__ import annotations

import numpy as np
import pytest

from tools.matching import MatchTally, match_frame
from tools.scenes.shapes import generate_image


def _box(y0: int, y1: int, x0: int, x1: int, shape: tuple[int, int] = (40, 60)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_greedy_match_by_iou_with_class_and_border_flags() -> None:
    gt = [_box(0, 25, 0, 20), _box(10, 35, 30, 50), _box(30, 35, 0, 5)]  # 500 px, 500 px, 25 px
    pred = [_box(10, 35, 30, 48), _box(0, 25, 0, 25)]  # IoU 450/500 = 0.9 ; 500/625 = 0.8
    matches = match_frame(gt, [1, 2, 3], pred, [3, 2], min_area=400)
    assert len(matches) == 2  # the 25-px instance is below min_area
    first, second = matches
    assert (first.gt_label, first.pred_label, first.touches_border) == (1, 2, True)
    assert first.iou == pytest.approx(0.8)
    assert (second.gt_label, second.pred_label, second.touches_border) == (2, 3, False)
    assert second.iou == pytest.approx(0.9)
    s = MatchTally(matches).summary()
    assert (s["total"], s["found"], s["correct"], s["found_at_border"]) == (2, 2, 0, 1)
    assert s["mean_iou"] == pytest.approx(0.85)


def test_a_prediction_is_claimed_once_and_low_iou_is_not_found() -> None:
    gt = [_box(0, 25, 0, 20), _box(0, 25, 0, 20)]
    pred = [_box(0, 25, 0, 20), _box(0, 25, 0, 4)]  # second: IoU 100/500 = 0.2 with either
    matches = match_frame(gt, [1, 1], pred, [1, 1])
    assert [m.iou for m in matches] == [pytest.approx(1.0), pytest.approx(0.2)]
    assert [m.pred_label for m in matches] == [1, 0]
    assert [m.found for m in matches] == [True, False]
    s = MatchTally(matches).summary()
    assert (s["total"], s["found"], s["correct"]) == (2, 1, 1)


def test_unpaired_masks_and_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="pair up"):
        match_frame([_box(0, 25, 0, 20)], [1, 2], [], [])


def test_border_fraction_cuts_shapes_and_zero_keeps_existing_seeds() -> None:
    plain = generate_image(7)
    again = generate_image(7, border_fraction=0.0)
    assert np.array_equal(plain.image, again.image) and np.array_equal(plain.labels, again.labels)

    def at_edge(masks: np.ndarray) -> int:
        return int(sum(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() for m in masks))

    plain_cut = sum(at_edge(generate_image(s).masks) for s in range(20))
    plain_all = sum(len(generate_image(s).masks) for s in range(20))
    cut_scenes = [generate_image(s, border_fraction=1.0) for s in range(20)]
    cut = sum(at_edge(sc.masks) for sc in cut_scenes)
    cut_all = sum(len(sc.masks) for sc in cut_scenes)
    assert cut / cut_all > 0.9 > 0.5 > plain_cut / plain_all
