"""RoIAlign: hand-computed golden values, level mapping, and equality with torchvision."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from engines.roi_align import RoIAlignParams, boxes_to_rois, map_levels, multilevel_roi_align

# A 4×4 map whose value is 10*y + x: bilinear interpolation is exact, so each bin's average
# is 10 * mean(y) + mean(x) over its sample points.
RAMP = (10 * torch.arange(4.0)[:, None] + torch.arange(4.0)[None, :])[None, None]
TORCHVISION = "torchvision (a test dependency: pip install '.[test]') is the reference these tests compare with"


def one_level(**kw: object) -> RoIAlignParams:
    return RoIAlignParams(output_size=2, min_level=2, max_level=2, **kw)  # type: ignore[arg-type]


def pool(box: list[float], params: RoIAlignParams) -> torch.Tensor:
    return multilevel_roi_align([RAMP], torch.tensor([[0.0, *box]]), params)[0, 0]


def test_golden_legacy_fixed_sampling() -> None:
    # stride 4: box (4,4,12,12) → feature (1,1)-(3,3), bins of 1 px, samples at +0.25/+0.75.
    out = pool([4, 4, 12, 12], one_level(sampling_ratio=2, aligned=False))
    assert torch.allclose(out, torch.tensor([[16.5, 17.5], [26.5, 27.5]]))


def test_golden_aligned_half_pixel_shift() -> None:
    # aligned: corners shifted by -0.5 feature px → bin centres at 1.0 and 2.0.
    out = pool([4, 4, 12, 12], one_level(sampling_ratio=2, aligned=True))
    assert torch.allclose(out, torch.tensor([[11.0, 12.0], [21.0, 22.0]]))


def test_golden_clamps_at_last_pixel() -> None:
    # box (8,8,16,16) → feature (2,2)-(4,4): samples past x=3 read the last column/row.
    out = pool([8, 8, 16, 16], one_level(sampling_ratio=2, aligned=False))
    assert torch.allclose(out, torch.tensor([[27.5, 28.0], [32.5, 33.0]]))


def test_golden_adaptive_sampling() -> None:
    # box (0,0,12,12) → 3 feature px for 2 bins → ceil(3/2) = 2 samples per side, bins of 1.5 px.
    out = pool([0, 0, 12, 12], one_level(sampling_ratio=0, aligned=False))
    assert torch.allclose(out, torch.tensor([[8.25, 9.75], [23.25, 24.75]]))


def test_golden_outside_is_zero_and_legacy_min_size() -> None:
    assert torch.equal(pool([-40, -40, -20, -20], one_level()), torch.zeros(2, 2))
    # legacy: a zero-size box is widened to 1×1 feature px; aligned keeps it empty (0 samples → 0).
    legacy = pool([4, 4, 4, 4], one_level(aligned=False))
    # widened to 1 px → bins of 0.5 px, samples at +0.125/+0.375: means 1.25 and 1.75 per axis.
    assert torch.allclose(legacy, torch.tensor([[13.75, 14.25], [18.75, 19.25]]))
    assert torch.equal(pool([4, 4, 4, 4], one_level(aligned=True, sampling_ratio=0)), torch.zeros(2, 2))


def test_max_mode_takes_largest_sample() -> None:
    out = pool([4, 4, 12, 12], one_level(sampling_ratio=2, mode="max"))
    # the largest sample in bin (0,0) is at (1.75, 1.75): 17.5 + 1.75.
    assert torch.allclose(out, torch.tensor([[19.25, 20.25], [29.25, 30.25]]))


@pytest.mark.parametrize(
    ("side", "level"), [(224, 4), (112, 3), (111.9, 2), (448, 5), (1000, 5), (10, 2), (447.9, 4)]
)
def test_level_mapping_matches_fpn_equation(side: float, level: int) -> None:
    box = torch.tensor([[0.0, 0.0, side, side]])
    assert int(map_levels(box, 2, 5)[0]) + 2 == level


@pytest.mark.parametrize(("aligned", "ratio"), [(False, 2), (True, 0), (False, 0), (True, 2), (False, 3)])
def test_single_level_equals_torchvision(aligned: bool, ratio: int) -> None:
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 16, 25, 30, generator=g)
    xy = torch.rand(400, 2, generator=g) * 140 - 10
    wh = torch.rand(400, 2, generator=g) * 70
    wh[:20] = torch.rand(20, 2, generator=g) * 0.5  # tiny boxes
    boxes = torch.cat([xy, xy + wh], 1)
    rois = torch.cat([torch.randint(0, 2, (400, 1), generator=g).float(), boxes], 1)
    ops = pytest.importorskip("torchvision.ops", reason=TORCHVISION)
    ref = ops.roi_align(feat, rois, 7, spatial_scale=0.25, sampling_ratio=ratio, aligned=aligned)
    ours = multilevel_roi_align([feat], rois, RoIAlignParams(7, ratio, aligned, min_level=2, max_level=2))
    assert (ref - ours).abs().max() <= 1e-5


@pytest.mark.parametrize("output_size", [7, 14])
def test_multilevel_equals_torchvision_multiscale(output_size: int) -> None:
    g = torch.Generator().manual_seed(2)
    sizes = [(800, 1216), (760, 1190)]
    feats = OrderedDict((str(i), torch.randn(2, 32, 800 // 4 // 2**i, 1216 // 4 // 2**i, generator=g))
                        for i in range(4))
    boxes = []
    for h, w in sizes:
        xy = torch.rand(300, 2, generator=g) * torch.tensor([w + 40.0, h + 40.0]) - 20
        wh = torch.exp(torch.rand(300, 2, generator=g) * 6.8)  # 1 .. 900 px: every level
        b = torch.cat([xy, xy + wh], 1)
        b[:10, 2:] = b[:10, :2] + 0.3  # tiny
        b[10:20] = torch.tensor([-200.0, -200.0, -100.0, -120.0])  # out of image
        boxes.append(b)
    levels = map_levels(torch.cat(boxes), 2, 5)
    assert set(levels.tolist()) == {0, 1, 2, 3}
    ops = pytest.importorskip("torchvision.ops", reason=TORCHVISION)
    ref = ops.MultiScaleRoIAlign(["0", "1", "2", "3"], output_size, 2)(feats, boxes, sizes)
    ours = multilevel_roi_align(list(feats.values()), boxes_to_rois(boxes), RoIAlignParams(output_size=output_size))
    assert ours.shape == ref.shape
    assert (ref - ours).abs().max() <= 1e-5


def test_empty_and_errors() -> None:
    feats = [torch.zeros(1, 8, 16 // 2**i, 16 // 2**i) for i in range(4)]
    assert multilevel_roi_align(feats, torch.zeros(0, 5), RoIAlignParams()).shape == (0, 8, 7, 7)
    with pytest.raises(ValueError, match="one feature map per level"):
        multilevel_roi_align(feats[:3], torch.zeros(1, 5), RoIAlignParams())
    with pytest.raises(ValueError, match=r"Tensor\[R, 5\]"):
        multilevel_roi_align(feats, torch.zeros(3, 4), RoIAlignParams())
    with pytest.raises(ValueError, match="mode"):
        RoIAlignParams(mode="median")
