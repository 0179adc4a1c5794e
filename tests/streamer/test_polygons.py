"""streamer.polygons: exact pixel-edge outlines, checked by rasterising them back with pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from streamer.polygons import mask_to_polygons

SKIMAGE = "scikit-image (a test dependency: pip install '.[test]') provides the real mask and the hole filling"


def _rasterise(polygons: list[list[float]], h: int, w: int) -> np.ndarray:
    """pycocotools' polygon fill of ``polygons`` (union) as ``bool[h, w]``."""
    if not polygons:
        return np.zeros((h, w), bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus every background region (8-connected) that does not touch the border."""
    measure = pytest.importorskip("skimage.measure", reason=SKIMAGE)
    background = measure.label(~mask, connectivity=2, background=0)
    border = set(np.unique(np.concatenate([background[0], background[-1], background[:, 0],
                                           background[:, -1]]))) - {0}
    holes = (background > 0) & ~np.isin(background, list(border))
    return mask | holes


def test_rectangle_is_its_four_pixel_corners() -> None:
    mask = np.zeros((6, 7), bool)
    mask[1:4, 2:5] = True
    assert mask_to_polygons(mask) == [[2.0, 1.0, 5.0, 1.0, 5.0, 4.0, 2.0, 4.0]]


def test_empty_mask_has_no_polygon() -> None:
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_diagonal_pixels_are_separate_polygons() -> None:
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = True
    assert mask_to_polygons(mask) == [[0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0],
                                      [1.0, 1.0, 2.0, 1.0, 2.0, 2.0, 1.0, 2.0]]


def test_holes_are_filled_and_full_frame_masks_reach_the_border() -> None:
    ring = np.ones((7, 7), bool)
    ring[3, 3] = False
    assert mask_to_polygons(ring) == [[0.0, 0.0, 7.0, 0.0, 7.0, 7.0, 0.0, 7.0]]


def test_l_shape_keeps_only_turning_vertices() -> None:
    mask = np.zeros((5, 5), bool)
    mask[0:4, 0:2] = True
    mask[2:4, 2:5] = True
    assert mask_to_polygons(mask) == [[0.0, 0.0, 2.0, 0.0, 2.0, 2.0, 5.0, 2.0, 5.0, 4.0, 0.0, 4.0]]


@pytest.mark.parametrize("threshold", [80, 110, 150])
def test_pycocotools_rasterises_polygons_back_to_the_mask_with_holes_filled(threshold: int) -> None:
    coins = pytest.importorskip("skimage.data", reason=SKIMAGE).coins()
    mask = coins[::2, ::2] > threshold  # real, ragged, many components and holes
    polygons = mask_to_polygons(mask)
    assert len(polygons) > 5
    assert all(len(p) % 2 == 0 and len(p) >= 8 for p in polygons)
    h, w = mask.shape
    assert np.array_equal(_rasterise(polygons, h, w), _fill_holes(mask))


def test_rejects_non_2d_masks() -> None:
    with pytest.raises(ValueError, match=r"2-D bool\[H, W\], got shape \(2, 3, 4\)"):
        mask_to_polygons(np.zeros((2, 3, 4), bool))
