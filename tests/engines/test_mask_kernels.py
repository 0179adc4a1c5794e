"""The compiled kernels: the paste against PyTorch's bilinear resize, pixel by pixel, and its
band; the RLE counts and their COCO text against pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

from engines.box_kernels import visible
from engines.mask_kernels import BAND, paste_box
from engines.masks import BoxMask, _grown_boxes, paste_boxes
from engines.rle_kernels import box_rle_counts, coco_rle_string
from streamer.replay import synthetic_detections


def torch_crop(src: np.ndarray, box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """PyTorch's resized values over the frame pixels the integer box covers (float32)."""
    x1, y1, x2, y2 = box
    resized = F.interpolate(torch.from_numpy(src)[None, None], size=(max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)),
                            mode="bilinear", align_corners=False)[0, 0].numpy()
    x0, xe, y0, ye = visible(*box, height, width)
    return resized[y0 - y1:ye - y1, x0 - x1:xe - x1]


def kernel(src: np.ndarray, box: tuple[int, int, int, int] | list[int] | np.ndarray, height: int, width: int,
           threshold: float) -> tuple[np.ndarray, int, bool]:
    """:func:`paste_box` over the box's visible window in a ``height × width`` frame; its RLE
    counts checked against pycocotools' encoding of the mask placed in the frame."""
    x0, xe, y0, ye = visible(*box, height, width)
    mask, area, unsure, counts = paste_box(src, *box, x0, xe, y0, ye, threshold, height, width)
    if not unsure:
        full = np.zeros((height, width), np.uint8, order="F")
        full[y0:ye, x0:xe] = mask
        want = mask_utils.encode(full[:, :, None])[0]["counts"]
        assert coco_rle_string(counts).tobytes() == want, (box, threshold)
    return mask, area, unsure


def float64_values(src: np.ndarray, box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """The kernel's arithmetic written independently in numpy: float64 bilinear values, with
    PyTorch's float32 scale and source index (the module docstring of engines.mask_kernels)."""
    x1, y1, x2, y2 = box

    def axis(n_out: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = src.shape[0]
        real = np.maximum(float(np.float32(n / n_out)) * (np.arange(start, stop) + 0.5) - 0.5, 0.0)
        i0 = np.minimum(np.floor(real).astype(np.int64), n - 1)
        return i0, np.where(i0 < n - 1, i0 + 1, i0), np.clip(real - i0, 0.0, 1.0)

    x0, xe, y0, ye = visible(*box, height, width)
    xi0, xi1, xl = axis(max(x2 - x1 + 1, 1), x0 - x1, xe - x1)
    yi0, yi1, yl = axis(max(y2 - y1 + 1, 1), y0 - y1, ye - y1)
    s = src.astype(np.float64)
    rows = s[:, xi0] * (1 - xl) + s[:, xi1] * xl
    return rows[yi0] * (1 - yl)[:, None] + rows[yi1] * yl[:, None]


def random_source(rng: np.random.Generator, m: int = 28) -> np.ndarray:
    """A padded ``(m+2)×(m+2)`` mask: a soft blob with a noisy rim (values cross 0.5 as a mask head's do)."""
    yy, xx = np.mgrid[:m, :m] / (m - 1) * 2 - 1
    r = np.hypot(xx / rng.uniform(0.3, 1.0), yy / rng.uniform(0.3, 1.0)) + rng.normal(0, 0.1, (m, m))
    return np.pad(1 / (1 + np.exp((r - 1) * rng.uniform(2, 12))), 1).astype(np.float32)


@pytest.mark.parametrize(("m", "cases"), [(28, 1500), (56, 300)])
def test_certain_pixels_are_decided_as_pytorch_decides_them(m: int, cases: int) -> None:
    """Masks of torchvision's 28×28 head, and of a 56×56 one (source indices past 32: a wider band).
    Many instances have pixels inside the band that the per-pixel bound then decided ("refined"):
    those pixels are the ones closest to the threshold, the hardest to get right."""
    rng = np.random.default_rng(3)
    height, width = 3 * (m + 2) + 60, 131  # room for tall boxes: blocks of three rows and more
    certain = uncertain = pixels = refined = tall = 0
    for _ in range(cases):
        src = random_source(rng, m)
        x1, y1 = int(rng.integers(-60, 140)), int(rng.integers(-60, height - 40))
        x2, y2 = x1 + int(rng.integers(0, 180)), y1 + int(rng.integers(0, 3 * height // 2))
        threshold = float(rng.choice([0.5, 0.3, 0.9]))
        mask, area, unsure = kernel(src, (x1, y1, x2, y2), height, width, threshold)
        want = torch_crop(src, (x1, y1, x2, y2), height, width) > threshold
        assert mask.shape == want.shape
        if unsure:
            uncertain += 1
            continue
        certain += 1
        tall += mask.shape[0] >= 3 * (m + 2)  # blocks of 3+ rows, else blocks of a row or two
        pixels += mask.size
        refined += bool(np.any(np.abs(float64_values(src, (x1, y1, x2, y2), height, width) - threshold) <= BAND))
        assert np.array_equal(mask, want), (x1, y1, x2, y2, threshold)
        assert area == np.count_nonzero(want)
    assert certain > cases * 2 // 3 and pixels > cases * 1300, (certain, pixels)
    assert cases // 10 < tall < certain - cases // 10, tall  # tall and low boxes, in numbers
    assert refined + uncertain > cases // 150, (refined, uncertain)


@pytest.mark.parametrize(("m", "cases"), [(28, 1500), (56, 300)])
def test_pixels_at_the_threshold_are_decided_as_pytorch_decides_them_or_handed_back(m: int, cases: int) -> None:
    """The threshold put within the band of some pixel of each instance (a float32 number near
    its float64 value): the kernel must decide those pixels by the per-pixel bound exactly as
    PyTorch does, or report the instance uncertain."""
    rng = np.random.default_rng(4)
    height, width = 197, 131
    refined = uncertain = 0
    for _ in range(cases):
        src = random_source(rng, m)
        x1, y1 = (int(v) for v in rng.integers(-20, 100, 2))
        box = (x1, y1, x1 + int(rng.integers(2, 120)), y1 + int(rng.integers(2, 200)))
        exact = float64_values(src, box, height, width)
        if exact.size == 0:
            continue
        pick = exact.flat[int(rng.integers(exact.size))]
        threshold = float(np.float32(pick + rng.uniform(-BAND, BAND)))
        mask, area, unsure = kernel(src, box, height, width, threshold)
        if unsure:
            uncertain += 1
            continue
        refined += bool(np.any(np.abs(exact - threshold) <= BAND))
        want = torch_crop(src, box, height, width) > threshold
        assert np.array_equal(mask, want), (box, threshold)
        assert area == np.count_nonzero(want)
    assert refined > cases // 2 and uncertain > cases // 100, (refined, uncertain)


def test_the_band_is_what_keeps_the_kernel_exact() -> None:
    """A threshold placed at one of PyTorch's float32 values whose exact (float64) value lies
    above it: deciding by the float64 value alone would set a pixel PyTorch leaves clear. The
    pixel is inside the band, so the kernel reports the instance uncertain and the paste falls
    back to PyTorch, bit for bit."""
    rng = np.random.default_rng(11)
    height, width = 200, 200
    for _ in range(200):
        src = random_source(rng)
        boxes = np.array([[*rng.uniform(0, 30, 2), *rng.uniform(60, 170, 2)]], np.float32)
        (grown,), _ = _grown_boxes(boxes, 30 / 28)
        box = (grown[0], grown[1], grown[2], grown[3])
        ref = torch_crop(src, box, height, width)
        exact = float64_values(src, box, height, width)
        assert np.abs(exact - ref.astype(np.float64)).max() < BAND / 2  # the module's bound, with room
        above = np.flatnonzero((exact > ref) & (ref > 0.2) & (ref < 0.8))
        if above.size:
            break
    else:
        raise AssertionError("no pixel whose float64 value exceeds PyTorch's float32 value")
    threshold = float(ref.flat[above[0]])
    assert exact.flat[above[0]] > threshold and not ref.flat[above[0]] > threshold  # the naive rule disagrees
    assert kernel(src, box, height, width, threshold)[2]  # uncertain
    probs = src[1:-1, 1:-1][None]
    pasted = paste_boxes(probs, boxes, height, width, threshold)[0]
    want = paste_masks_in_image(torch.from_numpy(probs)[:, None], torch.from_numpy(boxes), (height, width))
    assert np.array_equal(pasted.to_full(height, width), (want[0, 0] > threshold).numpy())


def test_realistic_frames_paste_as_torchvision_with_both_paths_taken() -> None:
    """1080p frames of realistic detections: every mask equals torchvision's; some instances
    were decided by the kernel alone and some handed back to PyTorch; each mask holds only its
    own pixels (a mask the tracker keeps for a second must not pin its whole frame's buffer)."""
    height, width = 1080, 1920
    unsure = 0
    for seed in range(6):
        det = synthetic_detections(20, height, width, seed=seed)
        masks = paste_boxes(det.mask_probs, det.boxes, height, width, 0.5)
        want = paste_masks_in_image(torch.from_numpy(det.mask_probs)[:, None], torch.from_numpy(det.boxes),
                                    (height, width))[:, 0] > 0.5
        for k, bm in enumerate(masks):
            assert np.array_equal(bm.to_full(height, width), want[k].numpy()), (seed, k)
            assert bm.area == int(want[k].sum())
            owner = bm.mask
            while isinstance(owner.base, np.ndarray):
                owner = owner.base
            assert owner.nbytes == bm.mask.nbytes, (seed, k)  # a kept mask pins only its own pixels
        padded = np.pad(det.mask_probs, ((0, 0), (1, 1), (1, 1)))
        grown, _ = _grown_boxes(det.boxes, 30 / 28)
        unsure += sum(kernel(padded[k], grown[k], height, width, 0.5)[2] for k in range(20))
    assert 0 < unsure < 40, unsure


def test_a_frames_masks_of_many_runs_paste_as_each_alone() -> None:
    """Noisy masks in large boxes (thousands of runs each) pasted as one frame: the frame's run and
    text buffers grow between instances, and every mask's runs, COCO text and area still equal
    the same instance pasted alone (whose exactness the tests above prove)."""
    rng = np.random.default_rng(7)
    grew = 0
    for _ in range(40):
        k = int(rng.integers(2, 6))
        probs = rng.uniform(0, 1, (k, 28, 28)).astype(np.float32)
        x1, y1 = rng.uniform(-50, 600, k), rng.uniform(-50, 400, k)
        boxes = np.stack([x1, y1, x1 + rng.uniform(1, 500, k), y1 + rng.uniform(1, 400, k)], 1).astype(np.float32)
        frame = paste_boxes(probs, boxes, 480, 640, 0.5)
        for i, bm in enumerate(frame):
            (alone,) = paste_boxes(probs[i:i + 1], boxes[i:i + 1], 480, 640, 0.5)
            assert (bm.x0, bm.y0, bm.shape, bm.area, bm.coco_counts) == (
                alone.x0, alone.y0, alone.shape, alone.area, alone.coco_counts)
            assert (bm.runs is None and alone.runs is None) or np.array_equal(bm.runs, alone.runs)
        room = max(h * w + w + 2 for h, w in (bm.shape for bm in frame)) + 512 * k  # the first buffer's
        used = np.cumsum([0] + [len(bm.runs) if bm.runs is not None else 0 for bm in frame])
        grew += any(used[i] + h * w + w + 2 > room for i, (h, w) in enumerate(bm.shape for bm in frame))
    assert grew > 5, grew  # frames whose runs buffer had to grow between two masks


def test_rle_counts_of_either_memory_layout() -> None:
    mask = np.array([[1, 0, 1], [1, 1, 0]], bool)
    counts = box_rle_counts(mask, 1, 1, 4, 5).tolist()
    assert counts == box_rle_counts(np.asfortranarray(mask), 1, 1, 4, 5).tolist()
    assert counts == [5, 2, 3, 1, 2, 1, 6]
    assert BoxMask(1, 1, mask).area == 4


def test_coco_rle_text_equals_pycocotools_for_any_counts() -> None:
    """Run lengths up to 2^24 - 1 (a 16-megapixel frame), rising and falling (negative
    differences). pycocotools allots 6 bytes per count and writes its closing NUL past them
    when every count takes 6 (values from 2^24), so the larger values are checked by hand."""
    rng = np.random.default_rng(5)
    cases = [[0], [7], [0, 1], [3, 0, 5], [1, 2, 3, 4], [2**24 - 1], [5, 2**24 - 6], [100, 1, 1, 100, 1, 1]]
    for _ in range(2000):
        n = int(rng.integers(1, 40))
        top = int(rng.choice([4, 64, 5000, 2**20, 2**24 // n]))
        cases.append(rng.integers(0, top, size=n).tolist())
    # 2^30: six 5-bit groups of 0 with the continuation bit (48 + 32 = "P"), then 1 ("1").
    assert coco_rle_string(np.array([2**30], np.int64)).tobytes() == b"PPPPPP1"
    # -1 as the fourth count's difference (0 - 1): one group 0x1F, its sign bit set, no more ("O").
    assert coco_rle_string(np.array([0, 1, 0, 0], np.int64)).tobytes() == b"010O"
    for counts in cases:
        total = max(sum(counts), 1)
        want = mask_utils.frPyObjects({"size": [1, total], "counts": counts}, 1, total)["counts"]
        got = coco_rle_string(np.asarray(counts, np.int64)).tobytes()
        assert got == want, counts


def test_grown_boxes_kernel_equals_torchvisions_float32_expand_boxes() -> None:
    """The compiled box growth equals torchvision's ``expand_boxes`` (float32) then ``int64`` on
    200,000 random boxes (half-integer and integer coordinates among them, sub-pixel to frame-size
    boxes, some outside the frame); unsound boxes are flagged; the same arithmetic in float64
    truncates differently on some boxes (the check can fail)."""
    from engines.box_kernels import grown_boxes
    from engines.masks import expand_boxes

    rng = np.random.default_rng(0)
    n = 200_000
    x1, y1 = rng.uniform(-100, 2000, n), rng.uniform(-100, 1200, n)
    w, h = np.exp(rng.uniform(-3, 7, n)), np.exp(rng.uniform(-3, 7, n))
    boxes = np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)
    boxes[::7] = np.round(boxes[::7] * 2) / 2
    boxes[::11] = np.round(boxes[::11])
    for scale in (30 / 28, 1.5):
        grown, sound = grown_boxes(boxes, scale)
        ref = expand_boxes(torch.from_numpy(boxes), scale).to(torch.int64).numpy()
        assert sound.all() and np.array_equal(grown, ref)
        wide = boxes.astype(np.float64)
        w64, x64 = (wide[:, 2] - wide[:, 0]) * 0.5 * scale, (wide[:, 2] + wide[:, 0]) * 0.5
        assert (np.trunc(x64 - w64).astype(np.int64) != ref[:, 0]).any()

    bad = np.array([[np.nan, 0, 5, 5], [0, np.inf, 5, 5], [-np.inf, 0, 5, 5], [30, 10, 10, 30],
                    [10, 30, 30, 10], [5, 5, 5, 5]], np.float32)
    grown, sound = grown_boxes(bad, 30 / 28)
    assert sound.tolist() == [False, False, False, False, False, True]
    assert grown[0].tolist() == [0, 0, 5, 5] and grown[5].tolist() == [5, 5, 5, 5]
