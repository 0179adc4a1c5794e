"""Box-local mask pasting against torchvision's full-frame paste, over thousands of random cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

from engines.masks import BoxMask, paste_boxes
from streamer.schema import encode_box_polygons, encode_box_rle, encode_polygons, rle_counts

CASES = 3000


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One instance: ``float32[1, 28, 28]`` probabilities (empty, full, blob or noise) and a box
    that may be tiny, 1 pixel, touching or crossing any frame edge, or wholly outside."""
    h, w = (int(v) for v in rng.integers(1, 240 if rng.random() < 0.5 else 72, 2))
    kind = rng.integers(4)
    if kind == 0:
        probs = np.zeros((28, 28), np.float32)
    elif kind == 1:
        probs = np.ones((28, 28), np.float32)
    elif kind == 2:  # a soft disc: long runs, values near the threshold on its rim
        yy, xx = np.mgrid[:28, :28]
        r = rng.uniform(2, 16)
        probs = 1 / (1 + np.exp(-(r - np.hypot(yy - rng.uniform(0, 28), xx - rng.uniform(0, 28)))))
    else:
        probs = rng.random((28, 28))
    size = rng.choice([0.0, 0.4, 1.0, 2.0, 7.0, 30.0, 120.0, 250.0], 2) * rng.uniform(0.5, 1.5, 2)
    centre = rng.uniform(-0.3, 1.3, 2) * (w, h)
    if rng.random() < 0.3:  # snap onto an edge or a pixel boundary
        centre = np.round(centre)
    box = np.array([centre[0] - size[0] / 2, centre[1] - size[1] / 2,
                    centre[0] + size[0] / 2, centre[1] + size[1] / 2], np.float32)
    return probs.astype(np.float32)[None], box[None], h, w


def torchvision_mask(probs: np.ndarray, box: np.ndarray, h: int, w: int, threshold: float) -> np.ndarray:
    """torchvision's pasted mask, thresholded; torchvision raises on some boxes wholly outside the
    frame (a slice-size mismatch): no pixel of those is in the frame, so their mask is empty."""
    try:
        pasted = paste_masks_in_image(torch.from_numpy(probs)[:, None], torch.from_numpy(box), (h, w))
    except RuntimeError:
        return np.zeros((h, w), bool)
    return (pasted[0, 0] > threshold).numpy()


def test_box_local_paste_rle_and_polygons_equal_torchvision_and_pycocotools() -> None:
    rng = np.random.default_rng(20261203)
    outside = edge = empty = columns = 0
    for case in range(CASES):
        probs, box, h, w = random_case(rng)
        threshold = float(rng.choice([0.5, 0.3, 0.9]))
        (bm,) = paste_boxes(probs, box, h, w, threshold)
        ref = torchvision_mask(probs, box, h, w, threshold)
        where = f"case {case}: box {box[0].tolist()} in {w}x{h}"
        mh, mw = bm.mask.shape
        assert bm.x0 >= 0 and bm.x0 + mw <= w and bm.y0 >= 0 and bm.y0 + mh <= h, where
        assert np.array_equal(bm.to_full(h, w), ref), where
        fortran = np.asfortranarray(ref[:, :, None].astype(np.uint8))
        want = mask_utils.encode(fortran)[0]
        assert encode_box_rle(bm, h, w) == {"size": [h, w], "counts": want["counts"].decode()}, where
        if case % 4 == 0:  # polygon tracing is pure Python: a quarter of the cases
            assert encode_box_polygons(bm) == encode_polygons(ref), where
        outside += mh == 0 or mw == 0
        edge += mh > 0 and mw > 0 and (bm.x0 == 0 or bm.y0 == 0 or bm.x0 + mw == w or bm.y0 + mh == h)
        empty += not ref.any()
        columns += mh >= 3 * (28 + 2)  # a tall box: blocks of three rows and more
    # The generator reaches the cases that matter, in numbers.
    assert outside > 100 and edge > 500 and empty > 300 and columns > 60, (outside, edge, empty, columns)


@pytest.mark.parametrize(("mask", "counts"), [
    (np.ones((3, 4), bool), [0, 12]),                    # full frame: a leading empty zero run
    (np.zeros((3, 4), bool), [12]),                      # empty
    (np.array([[1, 0], [1, 0], [1, 1]], bool), [0, 3, 2, 1]),
])
def test_rle_counts_hand_computed(mask: np.ndarray, counts: list[int]) -> None:
    h, w = mask.shape
    assert rle_counts(BoxMask(0, 0, mask), h, w).tolist() == counts


def test_full_height_columns_join_into_one_run() -> None:
    """Column c ending set at the bottom row and column c+1 starting set at the top row: one run."""
    bm = BoxMask(1, 0, np.ones((5, 2), bool))
    assert rle_counts(bm, 5, 4).tolist() == [5, 10, 5]


def test_device_masks_come_to_the_host_in_order() -> None:
    """The GPU branch's one-copy transfer, exercised with host tensors (no GPU here)."""
    from engines.masks import _to_host

    a, b = torch.tensor([[True, False, True]]), torch.tensor([[False], [True]])
    empty = np.zeros((0, 0), bool)
    out = _to_host([(1, 2, a), (0, 0, empty), (5, 6, b)])
    assert [(x, y) for x, y, _ in out] == [(1, 2), (0, 0), (5, 6)]
    assert out[0][2].tolist() == [[True, False, True]] and out[1][2] is empty
    assert out[2][2].tolist() == [[False], [True]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_gpu_paste_equals_host_paste() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        probs, box, h, w = random_case(rng)
        host = paste_boxes(probs, box, h, w, 0.5)[0]
        dev = paste_boxes(torch.from_numpy(probs).cuda(), torch.from_numpy(box).cuda(), h, w, 0.5)[0]
        assert (dev.x0, dev.y0) == (host.x0, host.y0) and np.array_equal(dev.mask, host.mask)



def test_probability_inputs_of_any_layout_paste_alike() -> None:
    """float32 numpy (the runners'), float64, a strided view and CPU tensors give the same masks
    and COCO counts: the host path pads and converts whatever it is given."""
    rng = np.random.default_rng(7)
    probs = rng.random((6, 28, 56)).astype(np.float32)[:, :, ::2]  # a strided view, [6, 28, 28]
    boxes = np.array([[5, 5, 60, 90], [-10, 30, 20, 50], [0, 0, 1, 1], [70, 10, 140, 120],
                      [100, 100, 300, 300], [30.5, 40.25, 31.5, 41.75]], np.float32)
    dense = np.ascontiguousarray(probs)

    def summary(masks: list[BoxMask]) -> list[tuple[int, int, int, str | None, bytes]]:
        return [(m.x0, m.y0, m.area, m.coco_counts, np.ascontiguousarray(m.mask).tobytes()) for m in masks]

    ref = summary(paste_boxes(dense, boxes, 110, 130))
    assert sum(m[2] for m in ref) > 0
    for p, b in ((probs, boxes), (probs.astype(np.float64), boxes), (torch.from_numpy(dense), boxes),
                 (dense, torch.from_numpy(boxes)), (torch.from_numpy(dense), torch.from_numpy(boxes))):
        assert summary(paste_boxes(p, b, 110, 130)) == ref
