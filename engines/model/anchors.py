"""Anchors: per-level reference boxes for the RPN, in padded-batch pixel coordinates.

Equal to torchvision's ``AnchorGenerator``: for sizes ``s`` and aspect ratios ``r`` (h/w),
cell anchors are ``round([-w, -h, w, h] / 2)`` with ``h = sqrt(r) * s``, ``w = s / sqrt(r)``
(ratio-major order); they are shifted over a grid whose stride is the *integer*
``padded_size // feature_size`` (so the ``pool`` level of an 800-row batch has stride 61,
not 64). Ordering: location-major (row, column), anchor-minor — the order of
``permute(0, 2, 3, 1)`` on the RPN head outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cell_anchors(sizes: Sequence[int], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """``Tensor[A, 4]`` anchors centred on (0, 0), A = len(sizes) * len(aspect_ratios)."""
    scales = torch.as_tensor(sizes)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(
    base: torch.Tensor, feature_size: tuple[int, int], padded_size: tuple[int, int]
) -> torch.Tensor:
    """``Tensor[H*W*A, 4]`` anchors of one level for a batch padded to ``padded_size`` (H, W)."""
    fh, fw = feature_size
    stride_h = padded_size[0] // fh
    stride_w = padded_size[1] // fw
    dev = base.device
    shifts_x = torch.arange(0, fw, dtype=torch.int32, device=dev) * stride_w
    shifts_y = torch.arange(0, fh, dtype=torch.int32, device=dev) * stride_h
    sy, sx = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    sx, sy = sx.reshape(-1), sy.reshape(-1)
    shifts = torch.stack((sx, sy, sx, sy), dim=1)
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


class AnchorGrid(torch.nn.Module):
    """Anchors for all levels; cell anchors are buffers so they follow ``.to(device)``."""

    def __init__(self, sizes: Sequence[Sequence[int]], aspect_ratios: Sequence[Sequence[float]]) -> None:
        super().__init__()
        self.num_levels = len(sizes)
        for i, (s, r) in enumerate(zip(sizes, aspect_ratios, strict=True)):
            self.register_buffer(f"cell{i}", cell_anchors(s, r), persistent=False)

    def forward(self, feature_sizes: Sequence[tuple[int, int]], padded_size: tuple[int, int]) -> list[torch.Tensor]:
        """One ``Tensor[H_l*W_l*A, 4]`` per level (shared by every image of the batch)."""
        return [grid_anchors(getattr(self, f"cell{i}"), fs, padded_size) for i, fs in enumerate(feature_sizes)]
