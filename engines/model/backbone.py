"""ResNet body + FPN: images ``Tensor[N, 3, H, W]`` → five feature maps (strides 4, 8, 16, 32, 64*).

Module and parameter names equal torchvision's (``body.layer1.0.conv1.weight``,
``fpn.inner_blocks.0.0.weight``, ...) so its state dicts load strictly.

* FPN outputs ``P2..P5`` (strides 4..32) and ``pool`` = ``max_pool2d(P5, 1, 2)``. The
  ``pool`` level's stride is ``padded_size // feature_size`` (see ``anchors``), which is
  not always 64.
* :meth:`Backbone.fuse_norms` folds every frozen/eval batch norm into the preceding
  convolution (the folded weights are computed in float64 by default and rounded once).
  Not the default of :class:`engines.torch_runner.TorchRunner`: folding changes results by
  float rounding only (~1e-7 relative), but that rounding differs from torchvision's on
  every convolution and NMS near-ties turn it into different instance sets (see
  ``engines/torch_runner.py``). The export folds, as TensorRT would anyway.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from engines.model.config import MaskRCNNConfig


class Norm2d(nn.Module):
    """Inference batch norm with torchvision's parameter names.

    ``frozen=True`` is ``torchvision.ops.FrozenBatchNorm2d`` (``x * scale + shift``);
    ``frozen=False`` is ``nn.BatchNorm2d`` in eval mode (its buffers, incl.
    ``num_batches_tracked``, and ``F.batch_norm`` numerics).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, channels: int, frozen: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.frozen = frozen
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        if not frozen:
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``Tensor[C]`` scale and shift equal to this norm."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.frozen:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        scale, shift = self.scale_shift()
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


FOLD_DTYPES = (torch.float32, torch.float64)


def fold_norm(conv: nn.Module, norm: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Conv2d:
    """A new conv equal to ``norm(conv(x))`` (weights ``[O, I, kh, kw]`` scaled per output channel).

    ``dtype``: precision of the folding arithmetic (scale, shift, ``W * scale``,
    ``b * scale + shift``); the results are rounded once to the conv's dtype. float64 leaves
    one rounding per weight instead of three.
    """
    if not isinstance(conv, nn.Conv2d) or not isinstance(norm, Norm2d):
        raise TypeError(f"fold_norm needs (Conv2d, Norm2d), got ({type(conv).__name__}, {type(norm).__name__})")
    if dtype not in FOLD_DTYPES:
        raise ValueError(f"fold_norm folds in one of {FOLD_DTYPES}, got {dtype}")
    out_dtype = conv.weight.dtype
    with torch.no_grad():
        scale = norm.weight.to(dtype) * (norm.running_var.to(dtype) + norm.eps).rsqrt()
        shift = norm.bias.to(dtype) - norm.running_mean.to(dtype) * scale
        fused = copy.deepcopy(conv)
        fused.weight.copy_((conv.weight.to(dtype) * scale.reshape(-1, 1, 1, 1)).to(out_dtype))
        b = conv.bias.to(dtype) if conv.bias is not None else torch.zeros_like(shift)
        fused.bias = nn.Parameter((b * scale + shift).to(out_dtype))
    return fused


def fuse_conv_blocks(seq: nn.Sequential, dtype: torch.dtype = torch.float64) -> None:
    """Fold the norm of every ``(conv, Norm2d, ReLU)`` block of ``seq`` into its conv, in place."""
    for i, blk in enumerate(seq):
        if isinstance(blk, nn.Sequential) and len(blk) == 3 and isinstance(blk[1], Norm2d):
            seq[i] = nn.Sequential(fold_norm(blk[0], blk[1], dtype), nn.ReLU())


def _conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = False, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation, bias=bias)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, frozen: bool) -> None:
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride)
        self.bn1: nn.Module = Norm2d(planes, frozen)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2: nn.Module = Norm2d(planes, frozen)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(_conv(cin, planes, 1, stride), Norm2d(planes, frozen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)

    def fuse(self, dtype: torch.dtype = torch.float64) -> None:
        self.conv1, self.bn1 = fold_norm(self.conv1, self.bn1, dtype), nn.Identity()
        self.conv2, self.bn2 = fold_norm(self.conv2, self.bn2, dtype), nn.Identity()
        if self.downsample is not None:
            self.downsample = nn.Sequential(fold_norm(self.downsample[0], self.downsample[1], dtype))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3×3 convolution."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, frozen: bool) -> None:
        super().__init__()
        cout = planes * 4
        self.conv1 = _conv(cin, planes, 1)
        self.bn1: nn.Module = Norm2d(planes, frozen)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2: nn.Module = Norm2d(planes, frozen)
        self.conv3 = _conv(planes, cout, 1)
        self.bn3: nn.Module = Norm2d(cout, frozen)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv(cin, cout, 1, stride), Norm2d(cout, frozen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)

    def fuse(self, dtype: torch.dtype = torch.float64) -> None:
        self.conv1, self.bn1 = fold_norm(self.conv1, self.bn1, dtype), nn.Identity()
        self.conv2, self.bn2 = fold_norm(self.conv2, self.bn2, dtype), nn.Identity()
        self.conv3, self.bn3 = fold_norm(self.conv3, self.bn3, dtype), nn.Identity()
        if self.downsample is not None:
            self.downsample = nn.Sequential(fold_norm(self.downsample[0], self.downsample[1], dtype))


class ResNetBody(nn.Module):
    """ResNet without avgpool/fc; returns the outputs of layer1..layer4 (strides 4, 8, 16, 32)."""

    def __init__(self, cfg: MaskRCNNConfig) -> None:
        super().__init__()
        frozen = cfg.backbone_norm == "frozen_bn"
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if cfg.block == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1: nn.Module = Norm2d(64, frozen)
        cin = 64
        self.out_channels: list[int] = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), cfg.layers, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1, frozen))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels.append(cin)

    def stages(self) -> Iterator[nn.Sequential]:
        for i in range(1, 5):
            yield getattr(self, f"layer{i}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        outs = []
        for stage in self.stages():
            x = stage(x)
            outs.append(x)
        return outs

    def fuse(self, dtype: torch.dtype = torch.float64) -> None:
        self.conv1, self.bn1 = fold_norm(self.conv1, self.bn1, dtype), nn.Identity()
        for stage in self.stages():
            for blk in stage:
                if isinstance(blk, BasicBlock | Bottleneck):
                    blk.fuse(dtype)


def _conv_block(cin: int, cout: int, k: int, norm: bool, frozen: bool = False) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` without activation: ``0`` = conv, ``1`` = norm."""
    if norm:
        return nn.Sequential(_conv(cin, cout, k), Norm2d(cout, frozen))
    return nn.Sequential(_conv(cin, cout, k, bias=True))


def _fuse_block(seq: nn.Module, dtype: torch.dtype) -> nn.Module:
    if isinstance(seq, nn.Sequential) and len(seq) == 2 and isinstance(seq[1], Norm2d):
        return nn.Sequential(fold_norm(seq[0], seq[1], dtype))
    return seq


class FPN(nn.Module):
    """Feature pyramid (Lin et al. 2017) with torchvision's top-down nearest upsampling."""

    def __init__(self, in_channels: list[int], out_channels: int, norm: bool) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(_conv_block(c, out_channels, 1, norm) for c in in_channels)
        self.layer_blocks = nn.ModuleList(_conv_block(out_channels, out_channels, 3, norm) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        last = self.inner_blocks[-1](feats[-1])
        results = [self.layer_blocks[-1](last)]
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[idx](feats[idx])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.layer_blocks[idx](last))
        results.append(F.max_pool2d(results[-1], 1, 2, 0))
        return results

    def fuse(self, dtype: torch.dtype = torch.float64) -> None:
        self.inner_blocks = nn.ModuleList(_fuse_block(b, dtype) for b in self.inner_blocks)
        self.layer_blocks = nn.ModuleList(_fuse_block(b, dtype) for b in self.layer_blocks)


class Backbone(nn.Module):
    """``body`` (ResNet) + ``fpn``: ``Tensor[N, 3, H, W]`` → ``[P2, P3, P4, P5, pool]``."""

    def __init__(self, cfg: MaskRCNNConfig) -> None:
        super().__init__()
        self.body = ResNetBody(cfg)
        self.fpn = FPN(self.body.out_channels, cfg.fpn_channels, cfg.fpn_norm)
        self.out_channels = cfg.fpn_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.fpn(self.body(x))

    def fuse_norms(self, dtype: torch.dtype = torch.float64) -> None:
        """Fold every norm into its conv, the arithmetic in ``dtype`` (see :func:`fold_norm`)."""
        self.body.fuse(dtype)
        self.fpn.fuse(dtype)
