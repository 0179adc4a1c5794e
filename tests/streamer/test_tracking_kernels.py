"""The tracker's compiled loops do the numpy expressions' float64 operations, bit for bit, and
its mask overlaps on COCO runs count what the pixels do.

Each reference below is the numpy expression the kernel replaced (the tracker's code before it
was compiled). Equality is checked on the bits (``view(np.uint64)``), so a kernel that merely
rounds differently — an operation reordered, an FMA contracted — fails; the last test shows that
such a variant does differ from the reference on these inputs.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from engines.masks import BoxMask, paste_boxes
from engines.rle_kernels import coco_rle_string
from streamer import tracking_kernels as kernels
from streamer.replay import synthetic_detections
from streamer.tracking import CANDIDATE_IOU, CLASS_CHANGE_FACTOR, Tracker, shifted_mask_iou
from streamer.tracking_config import TrackingConfig
from streamer.tracking_kalman import ACCEL_STD, MEAS_STD, BoxKalman

F64 = npt.NDArray[np.float64]


def bits(a: F64) -> npt.NDArray[np.uint64]:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def ref_box_iou(a: F64, b: F64) -> F64:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.maximum(a[:, 2] - a[:, 0], 0.0) * np.maximum(a[:, 3] - a[:, 1], 0.0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def random_boxes(rng: np.random.Generator, n: int, degenerate: bool = True) -> F64:
    xy = rng.uniform(0, 600, (n, 2))
    wh = rng.uniform(0.5, 120, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    if degenerate and n >= 4:
        boxes[0, 2] = boxes[0, 0]            # zero width
        boxes[1, 2:] = boxes[1, :2] - 3.0    # inverted
        boxes[2, 1] = np.nan                 # NaN (never from the tracker; tools call box_iou too)
        boxes[3] = boxes[min(4, n - 1)]      # a duplicate: IoU exactly 1
    return boxes


@pytest.mark.parametrize("seed", range(20))
def test_box_iou_equals_the_numpy_expression_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = random_boxes(rng, int(rng.integers(0, 30))), random_boxes(rng, int(rng.integers(0, 30)))
    got, want = kernels.box_iou(a, b), ref_box_iou(a, b)
    assert got.shape == want.shape
    assert np.array_equal(bits(got), bits(want))


def ref_pairs(sim: F64, pred: F64, mask_ref: F64, most: int) -> tuple[list[int], list[int], list[int], list[int]]:
    cand = sim > CANDIDATE_IOU
    ambiguous = cand & ((cand.sum(1, keepdims=True) > 1) | (cand.sum(0, keepdims=True) > 1))
    centres = (pred[:, :2] + pred[:, 2:]) / 2
    rows, cols = np.nonzero(ambiguous)
    if len(rows) > most:
        top = np.argsort(-sim[rows, cols], kind="stable")[:most]
        rows, cols = rows[top], cols[top]
    shifts = np.rint(centres[rows] - mask_ref[rows]).astype(np.int64)
    return rows.tolist(), cols.tolist(), shifts[:, 0].tolist(), shifts[:, 1].tolist()


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("most", [256, 5])
def test_ambiguous_pairs_equal_the_numpy_selection(seed: int, most: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(0, 25)), int(rng.integers(0, 25))
    pred = random_boxes(rng, n, degenerate=False)
    dets = pred[rng.integers(0, n, k)] + rng.normal(0, 8, (k, 4)) if n else random_boxes(rng, k, degenerate=False)
    sim = ref_box_iou(pred, dets)
    if sim.size:
        sim[rng.random(sim.shape) < 0.2] = 0.5  # exact ties: the stable order must hold
    mask_ref = pred[:, :2] + rng.uniform(-6, 6, (n, 2))
    mask_ref[: n // 3] = (pred[: n // 3, :2] + pred[: n // 3, 2:]) / 2 - 0.5  # shifts of exactly .5: round half to even
    rows, cols, dx, dy = kernels.ambiguous_pairs(sim, pred, mask_ref, CANDIDATE_IOU, most)
    assert (rows.tolist(), cols.tolist(), dx.tolist(), dy.tolist()) == ref_pairs(sim, pred, mask_ref, most)


def test_blend_equals_the_numpy_steps() -> None:
    rng = np.random.default_rng(3)
    sim = rng.uniform(0, 1, (12, 9))
    rows, cols = rng.integers(0, 12, 20), rng.integers(0, 9, 20)
    keep = np.unique(rows * 9 + cols, return_index=True)[1]  # pairs are distinct
    rows, cols = rows[keep].astype(np.int64), cols[keep].astype(np.int64)
    m_iou, has = rng.uniform(0, 1, len(rows)), rng.random(len(rows)) < 0.7
    tl, dl = rng.integers(1, 3, 12).astype(np.int64), rng.integers(1, 3, 9).astype(np.int64)
    want = sim.copy()
    for p in range(len(rows)):
        if has[p]:
            want[rows[p], cols[p]] = 0.5 * (want[rows[p], cols[p]] + m_iou[p])
    want *= np.where(tl[:, None] == dl[None, :], 1.0, CLASS_CHANGE_FACTOR)
    got = sim.copy()
    kernels.blend_mask_iou(got, rows, cols, m_iou, has, tl, dl, CLASS_CHANGE_FACTOR)
    assert np.array_equal(bits(got), bits(want))


class RefKalman:
    """The numpy expressions of :class:`BoxKalman` before they were compiled."""

    def __init__(self, kf: BoxKalman) -> None:
        self.x, self.v, self.p00, self.p01, self.p11 = (a.copy() for a in (kf.x, kf.v, kf.p00, kf.p01, kf.p11))

    @staticmethod
    def size(x: F64) -> F64:
        return np.sqrt(np.maximum(x[:, 2:3], 1.0) * np.maximum(x[:, 3:4], 1.0))

    def predict(self, dt: float) -> None:
        q = (ACCEL_STD * self.size(self.x)) ** 2
        self.x = self.x + self.v * dt
        self.x[:, 2:] = np.maximum(self.x[:, 2:], 1.0)
        self.p00 = self.p00 + 2 * dt * self.p01 + dt * dt * self.p11 + q * dt ** 3 / 3
        self.p01 = self.p01 + dt * self.p11 + q * dt * dt / 2
        self.p11 = self.p11 + q * dt

    def update(self, rows: npt.NDArray[np.int64], boxes: F64) -> None:
        z = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)
        x, v = self.x[rows], self.v[rows]
        p00, p01, p11 = self.p00[rows], self.p01[rows], self.p11[rows]
        r = (MEAS_STD * self.size(z)) ** 2
        s = p00 + r
        k0, k1 = p00 / s, p01 / s
        innov = z - x
        self.x[rows] = x + k0 * innov
        self.v[rows] = v + k1 * innov
        self.p00[rows] = (1 - k0) * p00
        self.p01[rows] = (1 - k0) * p01
        self.p11[rows] = p11 - k1 * p01

    def boxes(self) -> F64:
        half = self.x[:, 2:] / 2
        return np.concatenate([self.x[:, :2] - half, self.x[:, :2] + half], axis=1)


def assert_same_state(kf: BoxKalman, ref: RefKalman) -> None:
    for name in ("x", "v", "p00", "p01", "p11"):
        assert np.array_equal(bits(getattr(kf, name)), bits(getattr(ref, name))), name


@pytest.mark.parametrize("seed", range(5))
def test_kalman_steps_equal_the_numpy_expressions_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    kf = BoxKalman()
    kf.add(random_boxes(rng, 30, degenerate=False))
    ref = RefKalman(kf)
    for _ in range(40):
        dt = float(rng.choice([0.04, 1 / 30, 0.1, rng.uniform(0.001, 2.0)]))
        kf.predict(dt)
        ref.predict(dt)
        assert_same_state(kf, ref)
        assert np.array_equal(bits(kf.boxes()), bits(ref.boxes()))
        rows = np.sort(rng.choice(30, int(rng.integers(0, 30)), replace=False)).astype(np.int64)
        boxes = ref.boxes()[rows] + rng.normal(0, 3, (len(rows), 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] - 0.5)  # tiny and inverted sizes too
        kf.update(rows, boxes)
        ref.update(rows, boxes)
        assert_same_state(kf, ref)


def test_a_reordered_expression_is_caught() -> None:
    """The bit-for-bit checks can fail: summing the covariance terms in another order (what a
    kernel compiled with fast-math may do) changes bits of ``p00`` on the inputs above."""
    rng = np.random.default_rng(0)
    kf = BoxKalman()
    kf.add(random_boxes(rng, 30, degenerate=False))
    ref = RefKalman(kf)
    kf.p01 += rng.uniform(-50, 50, kf.p01.shape)
    ref.p01 = kf.p01.copy()
    differs = False
    for _ in range(40):
        dt = float(rng.uniform(0.001, 2.0))
        q = (ACCEL_STD * RefKalman.size(ref.x)) ** 2
        reordered = ref.p00 + (2 * dt * ref.p01 + (dt * dt * ref.p11 + q * dt ** 3 / 3))
        ref.predict(dt)
        kf.predict(dt)
        differs |= not np.array_equal(bits(reordered), bits(ref.p00))
        assert_same_state(kf, ref)
    assert differs


def pixel_overlap(a: BoxMask, dx: int, dy: int, b: BoxMask, height: int, width: int) -> int:
    """Pixels set in ``a`` moved by ``(dx, dy)`` and in ``b``, on full frames (a reference that
    shares no code with either path of :func:`shifted_mask_iou`)."""
    fa, fb = a.to_full(height, width), b.to_full(height, width)
    moved = np.zeros_like(fa)
    ys, xs = np.nonzero(fa)
    ys, xs = ys + dy, xs + dx
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    moved[ys[inside], xs[inside]] = True
    return int(np.count_nonzero(moved & fb))


@pytest.mark.parametrize("seed", range(12))
def test_mask_overlap_on_runs_equals_the_pixel_count(seed: int) -> None:
    """Small odd frames, boxes crossing every edge and spanning the full height (runs of ones that
    continue into the next column), shifts that push a mask partly or wholly out of the frame."""
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(5, 40)), int(rng.integers(5, 40))
    k = 12
    x1, y1 = rng.uniform(-10, width, k), rng.uniform(-10, height, k)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, width, k), y1 + rng.uniform(1, height, k)], 1)
    boxes[:4, 1], boxes[:4, 3] = -3.0, height + 3.0  # full height: runs cross column boundaries
    probs = synthetic_detections(k, 100, 100, seed=seed).mask_probs  # soft blobs with noisy rims
    probs[:3] = 1.0  # full masks
    masks = paste_boxes(probs, boxes.astype(np.float32), height, width)
    with_runs = [m for m in masks if m.runs is not None]
    assert len(with_runs) >= k // 2  # the host kernel decides most of them (the rest: empty or uncertain)
    crossing = 0
    for a in with_runs:
        starts = np.cumsum(a.runs)[:-1]
        crossing += int(np.any((starts[::2] // height) != ((starts[::2] + a.runs[1::2] - 1) // height)))
        for b in with_runs:
            for dx, dy in [(0, 0), (1, -1), tuple(rng.integers(-width, width, 2)), (0, height), (-width, 0)]:
                want = pixel_overlap(a, int(dx), int(dy), b, height, width)
                assert kernels.runs_overlap(a.runs, int(dx), int(dy), b.runs, height) == want
                union = a.area + b.area - want
                on_pixels = shifted_mask_iou(BoxMask(a.x0, a.y0, a.mask), a.area, int(dx), int(dy),
                                             BoxMask(b.x0, b.y0, b.mask), b.area)
                assert shifted_mask_iou(a, a.area, int(dx), int(dy), b, b.area) == on_pixels
                assert on_pixels == (want / union if union > 0 else 0.0)
    assert crossing > 0  # the case that needs splitting runs at column boundaries did occur


def test_paste_runs_are_the_masks_coco_counts() -> None:
    boxes = np.array([[5, 3, 60, 90], [-20, -5, 40, 200], [100, 10, 101, 11], [300, 300, 400, 400]], np.float32)
    masks = paste_boxes(synthetic_detections(4, 100, 100, seed=1).mask_probs, boxes, 120, 160)
    for m in masks[:3]:
        assert m.runs is not None and m.coco_counts is not None
        assert int(m.runs.sum()) == 120 * 160 and int(m.runs[1::2].sum()) == m.area
        assert coco_rle_string(m.runs).tobytes().decode("ascii") == m.coco_counts
    assert masks[3].runs is None and masks[3].area == 0  # wholly outside the frame: nothing pasted


def test_tracker_decides_alike_on_runs_and_on_pixels() -> None:
    """Overlapping pasted masks over 60 frames: the same ids whether the masks carry their runs."""
    rng = np.random.default_rng(2)
    det = synthetic_detections(25, 240, 320, seed=5)
    on_runs, on_pixels = Tracker(TrackingConfig()), Tracker(TrackingConfig())
    for i in range(60):
        boxes = det.boxes + rng.normal(0, 2, det.boxes.shape).astype(np.float32) + np.float32(i)
        masks = paste_boxes(det.mask_probs, boxes, 240, 320)
        plain = [BoxMask(m.x0, m.y0, m.mask) for m in masks]
        a = on_runs.update(i / 25, i, boxes, det.scores, det.labels, masks)
        b = on_pixels.update(i / 25, i, boxes, det.scores, det.labels, plain)
        assert a.ids.tolist() == b.ids.tolist()
    assert on_runs.next_id > 10
