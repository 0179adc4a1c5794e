"""Multi-level RoIAlign: FPN level assignment, bilinear sampling and pooling in one op.

Reference implementation (pure PyTorch, vectorized over RoIs, samples and levels: the
only Python loop is over fixed-size chunks of RoIs to bound memory). The CUDA kernel in
``build_engine`` implements exactly these numerics; its host build is tested against
this module.

The numerics that bite
----------------------
* **aligned / legacy.** torchvision's Mask R-CNN (``MultiScaleRoIAlign``) pools with
  ``aligned=False`` and ``sampling_ratio=2``: box corners are multiplied by the level's
  spatial scale with *no* half-pixel shift, and each RoI is widened to at least 1×1
  feature pixel. detectron2-style models use ``aligned=True`` (subtract 0.5 after
  scaling, no minimum size) with adaptive sampling (``sampling_ratio=0``). Parity with
  torchvision needs exactly the former; this op serves both, so the caller must say
  which. Getting it wrong shifts every mask by half a feature pixel (2–16 image px).
* **sampling ratio.** ``> 0``: that many samples per bin side. ``<= 0``: adaptive,
  ``ceil(roi_size / pooled_size)`` per RoI and per side (torchvision's rule).
* **sample points.** In bin ``(ph, pw)`` with ``G×G`` samples:
  ``y = y1 + ph*bin_h + (iy + 0.5) * bin_h / G``. A sample with ``y < -1`` or
  ``y > H`` (likewise ``x``) contributes 0 but still counts in the average; otherwise
  ``y`` is clamped to ``[0, H-1]`` and interpolated bilinearly. The bin value is
  ``sum / max(G_h*G_w, 1)``.
* **level mapping** (FPN paper eq. 1, torchvision's ``LevelMapper``):
  ``k = floor(k0 + log2(sqrt(area) / s0) + eps)`` clamped to ``[k_min, k_max]`` with
  canonical scale ``s0 = 224``, canonical level ``k0 = 4``, ``eps = 1e-6`` and ``area``
  the plain ``(x2-x1)*(y2-y1)`` of the box in input-image pixels. Level ``k`` has
  stride ``2**k`` (``spatial_scale = 2**-k``).

Max pooling (``mode="max"``) takes the maximum of the bilinear sample values in a bin
(out-of-range samples count as 0), as an option for ONNX ``RoiAlign(mode="max")`` users.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

CANONICAL_SCALE = 224.0
CANONICAL_LEVEL = 4
LEVEL_EPS = 1e-6
_CHUNK = 4096
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


@dataclass(frozen=True)
class RoIAlignParams:
    """Everything that determines the op. Defaults are torchvision Mask R-CNN's box pooler."""

    output_size: int = 7
    sampling_ratio: int = 2
    aligned: bool = False
    canonical_scale: float = CANONICAL_SCALE
    canonical_level: int = CANONICAL_LEVEL
    min_level: int = 2
    max_level: int = 5
    mode: str = "avg"

    def __post_init__(self) -> None:
        if self.output_size < 1:
            raise ValueError(f"output_size must be >= 1, got {self.output_size}")
        if self.min_level > self.max_level:
            raise ValueError(f"min_level must be <= max_level, got {self.min_level} > {self.max_level}")
        if self.mode not in ("avg", "max"):
            raise ValueError(f"mode must be 'avg' or 'max', got {self.mode!r}")

    @property
    def strides(self) -> tuple[int, ...]:
        """Feature stride of each level, ``2**k`` for ``k`` in ``[min_level, max_level]``."""
        return tuple(2**k for k in range(self.min_level, self.max_level + 1))


def map_levels(
    boxes: torch.Tensor,
    min_level: int,
    max_level: int,
    canonical_scale: float = CANONICAL_SCALE,
    canonical_level: int = CANONICAL_LEVEL,
    eps: float = LEVEL_EPS,
) -> torch.Tensor:
    """FPN level index (0-based, ``0 = min_level``) of each ``Tensor[R, 4]`` xyxy box: ``Tensor[R]`` int64."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    s = torch.sqrt(area)
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    lvl = torch.clamp(lvl, min=min_level, max=max_level)
    return (lvl.to(torch.int64) - min_level)


def boxes_to_rois(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image ``Tensor[K_i, 4]`` boxes → ``Tensor[sum K_i, 5]`` rows ``(batch_index, x1, y1, x2, y2)``."""
    if len(boxes) == 0:
        return torch.zeros((0, 5))
    idx = torch.cat([torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat([idx, torch.cat(list(boxes))], dim=1)


def roi_geometry(
    rois: torch.Tensor, scale: torch.Tensor, aligned: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Feature-map corner and size ``(x1, y1, w, h)``, each ``Tensor[R]``, of ``rois[R, 5]`` at ``scale[R]``.

    aligned: corners shifted by -0.5 px, sizes as they are; legacy: no shift, sizes at least 1 px.
    """
    shift = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * scale - shift
    y1 = rois[:, 2] * scale - shift
    rw = rois[:, 3] * scale - shift - x1
    rh = rois[:, 4] * scale - shift - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    return x1, y1, rw, rh


def axis_samples(
    start: torch.Tensor, length: torch.Tensor, pooled: int, grid: torch.Tensor, gmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample coordinates ``[R, pooled, gmax]`` along one axis, and which samples exist (adaptive grids)."""
    dev, dt = start.device, start.dtype
    bin_size = (length / pooled)[:, None, None]
    p = torch.arange(pooled, device=dev, dtype=dt)[None, :, None]
    i = torch.arange(gmax, device=dev, dtype=dt)[None, None, :]
    g = grid.to(dt)[:, None, None]
    coord = start[:, None, None] + p * bin_size + (i + 0.5) * bin_size / g.clamp(min=1)
    valid = i < g
    return coord, valid.expand_as(coord)


def bilinear_axis(
    coord: torch.Tensor, size: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's per-axis bilinear setup: (low index, high index, low weight, high weight, in range)."""
    size_f = size.to(coord.dtype)
    inside = (coord >= -1.0) & (coord <= size_f)
    c = coord.clamp(min=0)
    low = c.to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, low, low + 1)
    c = torch.where(at_edge, low.to(c.dtype), c)
    lw_high = c - low.to(c.dtype)
    lw_low = 1.0 - lw_high
    return low, high, lw_low, lw_high, inside


def multilevel_roi_align(
    features: Sequence[torch.Tensor],
    rois: torch.Tensor,
    params: RoIAlignParams,
    levels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool ``Tensor[R, C, S, S]`` from FPN ``features`` for ``rois``.

    Args:
        features: one ``Tensor[N, C, H_l, W_l]`` per level ``min_level..max_level``
            (stride ``2**k``), all of the same dtype and device.
        rois: ``Tensor[R, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image pixels.
        params: the op's parameters (see the module docstring).
        levels: optional ``Tensor[R]`` int64 0-based levels; computed by :func:`map_levels` if None.

    Returns:
        ``Tensor[R, C, S, S]`` with ``S = params.output_size``, in the features' dtype
        (accumulation in float32 at least).
    """
    n_levels = params.max_level - params.min_level + 1
    if len(features) != n_levels:
        raise ValueError(
            f"multilevel_roi_align needs one feature map per level {params.min_level}..{params.max_level} "
            f"({n_levels}), got {len(features)}"
        )
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be Tensor[R, 5] (batch_index, x1, y1, x2, y2), got shape {tuple(rois.shape)}")
    c = features[0].shape[1]
    s = params.output_size
    dev = features[0].device
    out_dtype = features[0].dtype
    acc = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    r = rois.shape[0]
    if r == 0:
        return torch.zeros((0, c, s, s), dtype=out_dtype, device=dev)
    rois = rois.to(acc)
    if levels is None:
        levels = map_levels(rois[:, 1:], params.min_level, params.max_level, params.canonical_scale,
                            params.canonical_level) if n_levels > 1 else torch.zeros(r, dtype=torch.int64, device=dev)

    # One flat [P, C] pixel table over all levels, channels last: index = off_l + (b*H_l + y)*W_l + x.
    flat = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, c) for f in features]).to(acc)
    sizes = [f.shape[-2:] for f in features]
    offs = [0]
    for f in features[:-1]:
        offs.append(offs[-1] + f.numel() // c)
    lvl_h = torch.tensor([h for h, _ in sizes], device=dev)
    lvl_w = torch.tensor([w for _, w in sizes], device=dev)
    lvl_off = torch.tensor(offs, device=dev)
    lvl_scale = torch.tensor([1.0 / st for st in params.strides], dtype=acc, device=dev)

    out = torch.empty((r, c, s, s), dtype=acc, device=dev)
    for start in range(0, r, _CHUNK):
        sl = slice(start, min(start + _CHUNK, r))
        out[sl] = _pool_chunk(flat, rois[sl], levels[sl], lvl_h, lvl_w, lvl_off, lvl_scale, params)
    return out.to(out_dtype)


def _pool_chunk(
    flat: torch.Tensor,
    rois: torch.Tensor,
    levels: torch.Tensor,
    lvl_h: torch.Tensor,
    lvl_w: torch.Tensor,
    lvl_off: torch.Tensor,
    lvl_scale: torch.Tensor,
    params: RoIAlignParams,
) -> torch.Tensor:
    s = params.output_size
    c = flat.shape[1]
    r = rois.shape[0]
    scale = lvl_scale[levels]
    height, width, off = lvl_h[levels], lvl_w[levels], lvl_off[levels]
    x1, y1, rw, rh = roi_geometry(rois, scale, params.aligned)
    if params.sampling_ratio > 0:
        gh = torch.full((r,), params.sampling_ratio, dtype=torch.int64, device=rois.device)
        gw = gh
    else:
        gh = torch.ceil(rh / s).to(torch.int64)
        gw = torch.ceil(rw / s).to(torch.int64)
    gh_max = max(int(gh.max()), 1)
    gw_max = max(int(gw.max()), 1)

    ys, yvalid = axis_samples(y1, rh, s, gh, gh_max)  # [R, S, Gh]
    xs, xvalid = axis_samples(x1, rw, s, gw, gw_max)  # [R, S, Gw]
    yl, yh, wyl, wyh, yin = bilinear_axis(ys, height[:, None, None])
    xl, xh, wxl, wxh, xin = bilinear_axis(xs, width[:, None, None])

    # Broadcast to [R, S(y), Gh, S(x), Gw].
    def yb(t: torch.Tensor) -> torch.Tensor:
        return t[:, :, :, None, None]

    def xb(t: torch.Tensor) -> torch.Tensor:
        return t[:, None, None, :, :]

    b = rois[:, 0].to(torch.int64)
    row_base = (b * height)[:, None, None, None, None]
    w5 = width[:, None, None, None, None]
    o5 = off[:, None, None, None, None]
    valid = yb(yvalid) & xb(xvalid)
    inside = (yb(yin) & xb(xin) & valid).to(flat.dtype)

    corners = [(yl, xl, yb(wyl) * xb(wxl)), (yl, xh, yb(wyl) * xb(wxh)),
               (yh, xl, yb(wyh) * xb(wxl)), (yh, xh, yb(wyh) * xb(wxh))]
    # idx/wt: [R, S(y), Gh, S(x), Gw, 4] pixel-table rows and bilinear weights (0 outside/invalid).
    idx = torch.stack([(o5 + (row_base + yb(yi)) * w5 + xb(xi)).expand(inside.shape) for yi, xi, _ in corners], -1)
    wt = torch.stack([w * inside for _, _, w in corners], -1)
    if params.mode == "max":
        val = (flat[idx.reshape(-1)].reshape(*idx.shape, c) * wt[..., None]).sum(-2)  # [R, S, Gh, S, Gw, C]
        masked = torch.where(valid[..., None], val, torch.tensor(float("-inf"), dtype=val.dtype, device=val.device))
        pooled = masked.amax(dim=(2, 4))
        pooled = torch.where(torch.isinf(pooled), torch.zeros_like(pooled), pooled)
        return pooled.permute(0, 3, 1, 2)
    # Average: one sparse [R*S*S, P] @ [P, C] product sums weight * pixel over samples and corners,
    # reading each needed feature row once and never materializing per-sample values.
    count = (gh * gw).clamp(min=1).to(flat.dtype)[:, None, None, None, None, None]
    wt = wt / count
    # CSR with rows = output bins (r, ph, pw); each bin has exactly Gh*Gw*4 entries.
    per_bin = idx.shape[2] * idx.shape[4] * 4
    cols = idx.permute(0, 1, 3, 2, 4, 5).reshape(-1)
    vals = wt.permute(0, 1, 3, 2, 4, 5).reshape(-1)
    crow = torch.arange(0, r * s * s + 1, device=idx.device, dtype=torch.int64) * per_bin
    mat = torch.sparse_csr_tensor(crow, cols, vals, (r * s * s, flat.shape[0]), check_invariants=False)
    pooled = (mat @ flat).reshape(r, s, s, c)
    return pooled.permute(0, 3, 1, 2)
