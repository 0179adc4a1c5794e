"""The CUDA kernel's own source, built for the host, against the reference RoIAlign op."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

from build_engine.kernel_host import HostRoIAlign, find_compiler, load_host_kernel
from engines.roi_align import RoIAlignParams, map_levels, multilevel_roi_align

pytestmark = pytest.mark.skipif(find_compiler() is None, reason="needs a C++ compiler (g++) for the host build")

IMAGE = (192, 288)  # (H, W), divisible by 32: every level's stride divides it


def _features(rng: np.random.Generator, params: RoIAlignParams, n: int = 2, c: int = 3) -> list[npt.NDArray[np.float32]]:
    return [
        rng.standard_normal((n, c, IMAGE[0] // s, IMAGE[1] // s), dtype=np.float32) for s in params.strides
    ]


def _random_rois(rng: np.random.Generator, r: int, n: int) -> npt.NDArray[np.float32]:
    """Boxes of log-uniform scale 1..900 px (every FPN level), some reaching outside the image."""
    scale = np.exp(rng.uniform(0, np.log(900), r))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), r))
    w, h = scale * np.sqrt(aspect), scale / np.sqrt(aspect)
    x1 = rng.uniform(-40, IMAGE[1], r)
    y1 = rng.uniform(-40, IMAGE[0], r)
    return np.stack([rng.integers(0, n, r), x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


def _reference(features: list[npt.NDArray[np.floating]], rois: npt.NDArray[np.float32], params: RoIAlignParams) -> npt.NDArray[np.floating]:
    return multilevel_roi_align([torch.from_numpy(f) for f in features], torch.from_numpy(rois), params).numpy()


PARAMS = {
    "torchvision-legacy-sr2": RoIAlignParams(),
    "legacy-adaptive": RoIAlignParams(sampling_ratio=0),
    "aligned-sr2": RoIAlignParams(aligned=True),
    "aligned-adaptive-14": RoIAlignParams(aligned=True, sampling_ratio=0, output_size=14),
    "max-legacy": RoIAlignParams(mode="max"),
    "max-aligned-adaptive": RoIAlignParams(mode="max", aligned=True, sampling_ratio=0),
    "canonical-112-level-3": RoIAlignParams(canonical_scale=112.0, canonical_level=3, sampling_ratio=3),
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_random_rois_on_every_level_match_reference(name: str) -> None:
    params = PARAMS[name]
    rng = np.random.default_rng(1234)
    feats = _features(rng, params)
    rois = _random_rois(rng, 96, n=2)
    levels = map_levels(torch.from_numpy(rois[:, 1:]), params.min_level, params.max_level,
                        params.canonical_scale, params.canonical_level)
    assert set(levels.tolist()) == {0, 1, 2, 3}, "test data must reach every level"

    out = load_host_kernel(params)(feats, rois)

    assert out.shape == (96, 3, params.output_size, params.output_size) and out.dtype == np.float32
    np.testing.assert_allclose(out, _reference(feats, rois, params), rtol=0, atol=1e-5)


EDGE_ROIS = np.array(
    [
        # b, x1, y1, x2, y2
        [0, 10.0, 12.0, 10.4, 12.3],      # sub-pixel box: widened to 1 feature px in legacy mode
        [1, 50.0, 60.0, 50.0, 60.0],      # zero size: area 0 → lowest level
        [0, 30.0, 40.0, 30.0, 90.0],      # zero width only
        [1, -300.0, -200.0, -100.0, -50.0],  # entirely above-left of the image
        [0, 400.0, 300.0, 700.0, 500.0],  # entirely below-right of the image
        [1, -20.0, -10.0, 320.0, 210.0],  # covers and overhangs the whole image
        [0, 0.0, 0.0, 112.0, 112.0],      # sqrt(area) = 112: exactly the level-3 boundary
        [1, 0.0, 0.0, 224.0, 224.0],      # exactly canonical: level 4
        [0, 0.0, 0.0, 224.0, 223.99994],  # a few ulps under canonical: level 4 only thanks to eps
        [0, 10.0, 20.0, 458.0, 468.0],    # sqrt(area) = 448: level 5
        [1, 0.0, 0.0, 2000.0, 2000.0],    # beyond the top level: clamped to 5
        [0, 287.0, 191.0, 288.0, 192.0],  # last pixel: samples clamp at the border
        [1, 5.0, 5.0, 6.0, 70.0],         # thin sliver
    ],
    dtype=np.float32,
)


@pytest.mark.parametrize("name", list(PARAMS))
def test_edge_case_rois_match_reference(name: str) -> None:
    params = PARAMS[name]
    feats = _features(np.random.default_rng(7), params)

    out = load_host_kernel(params)(feats, EDGE_ROIS)

    np.testing.assert_allclose(out, _reference(feats, EDGE_ROIS, params), rtol=0, atol=1e-5)


def test_rois_outside_the_image_pool_zeros() -> None:
    params = RoIAlignParams()
    feats = _features(np.random.default_rng(3), params)

    out = load_host_kernel(params)(feats, EDGE_ROIS[3:5])

    assert np.all(out == 0.0)


def test_batch_index_selects_the_image() -> None:
    params = RoIAlignParams()
    rng = np.random.default_rng(11)
    feats = _features(rng, params, n=3)
    box = np.array([40.0, 30.0, 200.0, 150.0], dtype=np.float32)
    rois = np.array([[b, *box] for b in (2, 0, 1, 2)], dtype=np.float32)

    out = load_host_kernel(params)(feats, rois)

    np.testing.assert_allclose(out, _reference(feats, rois, params), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out[0], out[3])
    assert not np.allclose(out[0], out[1])


def test_invalid_batch_index_gives_zeros_not_a_fault() -> None:
    params = RoIAlignParams()
    feats = _features(np.random.default_rng(5), params, n=2)
    rois = np.array([[2, 10, 10, 90, 90], [-1, 10, 10, 90, 90]], dtype=np.float32)

    assert np.all(load_host_kernel(params)(feats, rois) == 0.0)


def test_no_rois_gives_empty_output() -> None:
    params = RoIAlignParams()
    feats = _features(np.random.default_rng(0), params)

    out = load_host_kernel(params)(feats, np.zeros((0, 5), dtype=np.float32))

    assert out.shape == (0, 3, 7, 7)


@pytest.mark.parametrize("name", ["torchvision-legacy-sr2", "aligned-adaptive-14", "max-legacy"])
def test_fp16_io_matches_reference(name: str) -> None:
    params = PARAMS[name]
    rng = np.random.default_rng(99)
    feats16 = [f.astype(np.float16) for f in _features(rng, params)]
    rois = np.concatenate([_random_rois(rng, 64, n=2), EDGE_ROIS])
    kernel = load_host_kernel(params)

    out16 = kernel(feats16, rois)

    assert out16.dtype == np.float16
    ref = _reference(feats16, rois, params).astype(np.float32)
    assert np.all(np.abs(out16.astype(np.float32) - ref) <= 1e-2 * np.maximum(np.abs(ref), 1.0))
    # fp32 accumulation: the fp16 entry is the fp32 entry on the same values, rounded once.
    out32 = kernel([f.astype(np.float32) for f in feats16], rois)
    np.testing.assert_array_equal(out16, out32.astype(np.float16))


def test_host_half_conversions_are_ieee_round_to_nearest_even() -> None:
    kernel = load_host_kernel(RoIAlignParams())
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    as_float = kernel.half_to_float(bits)
    expected = bits.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(as_float), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_array_equal(as_float[finite].view(np.uint32), expected[finite].view(np.uint32))

    rng = np.random.default_rng(0)
    specials = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e9, -1e9, np.inf, -np.inf,
                         2.0**-24, 2.0**-25, 2.0**-25 * 1.0001, 2.0**-14, 2.0**-14 * 0.99951], dtype=np.float32)
    values = np.concatenate([specials, rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    values = values[~np.isnan(values)]
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(kernel.float_to_half(values), values.astype(np.float16).view(np.uint16))


def test_matches_torchvision_multiscale_roi_align() -> None:
    ops = pytest.importorskip("torchvision.ops", reason="torchvision (a test dependency: pip install '.[test]') is the reference")
    params = RoIAlignParams()
    rng = np.random.default_rng(2024)
    feats = _features(rng, params, n=2, c=4)
    rois = _random_rois(rng, 50, n=2)
    rois = rois[np.argsort(rois[:, 0], kind="stable")]
    pooler = ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], output_size=7, sampling_ratio=2)
    fmap = {f"p{k}": torch.from_numpy(f) for k, f in zip(range(2, 6), feats, strict=True)}
    boxes = [torch.from_numpy(rois[rois[:, 0] == b, 1:]) for b in range(2)]

    expected = pooler(fmap, boxes, [IMAGE, IMAGE]).numpy()

    np.testing.assert_allclose(load_host_kernel(params)(feats, rois), expected, rtol=0, atol=1e-5)


def test_rejects_inputs_the_kernel_cannot_take() -> None:
    kernel: HostRoIAlign = load_host_kernel(RoIAlignParams())
    feats = _features(np.random.default_rng(0), RoIAlignParams())
    rois = EDGE_ROIS[:2]
    with pytest.raises(ValueError, match="4 feature levels"):
        kernel(feats[:3], rois)
    with pytest.raises(ValueError, match="level 2"):
        kernel([feats[0], feats[1], feats[2].astype(np.float16), feats[3]], rois)
    with pytest.raises(ValueError, match=r"\[R, 5\]"):
        kernel(feats, rois[:, :4])
    with pytest.raises(ValueError, match="float32 or float16"):
        kernel([f.astype(np.float64) for f in feats], rois)
