"""The cell + nucleus U-Net of iPA (the Cell-Segmentation ``Unet`` of Li et al. 2022).

Parameter names and shapes equal those of iPA's ``cell_nucleus_unet_best.pth`` at ``width=64``:

- ``conv1`` … ``conv5``: double 3×3 convolutions (with bias) + batch norm + ReLU, held in a
  ``Sequential`` called ``conv`` (indices 0 conv, 1 BN, 2 ReLU, 3 conv, 4 BN, 5 ReLU); ``conv2`` …
  ``conv5`` max-pool by 2 first.
- ``up_concat5`` … ``up_concat2``: ``up.up`` = (nearest ×2 upsampling, 3×3 conv, BN, ReLU), then
  concatenation ``[upsampled, skip]`` along channels and ``conv.conv``, a double convolution.
  ``conv`` is registered before ``up``, as in the reference, so the state dict lists it first.
- ``Conv``: the final 1×1 convolution to the classes.
- dropout (p = 0.5, no parameters) on the bottleneck output of ``conv5`` and on the input of
  ``Conv``, active only in training mode.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import ConfigError
from ._kinds import ModelKind

__all__ = ["CellNucleusUNet"]

logger = logging.getLogger(__name__)

_DEPTH = 4  # poolings: inputs must be divisible by 2**_DEPTH


class _ConvBlock(nn.Module):
    """(max-pool ×2), then conv3×3-BN-ReLU twice; parameters under ``conv.{0,1,3,4}``."""

    def __init__(self, in_channels: int, out_channels: int, *, downsample: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            x = self.maxpool(x)
        return self.conv(x)


class _UpConv(nn.Module):
    """Nearest ×2 upsampling, conv3×3-BN-ReLU; parameters under ``up.{1,2}``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class _UpConcat(nn.Module):
    """Upsample the deeper feature map, concatenate ``[upsampled, skip]``, double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # registration order (conv, then up) fixes the state dict's key order
        self.conv = _ConvBlock(in_channels, out_channels)
        self.up = _UpConv(in_channels, out_channels)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(deep), skip], dim=1))


class CellNucleusUNet(nn.Module):
    """iPA's cell + nucleus U-Net: ``Unet(in_channel=1, n_class=3, is_dropout=True)``.

    Parameters
    ----------
    in_channels : int
        Input channels (1 for SXT slices).
    n_classes : int
        Output channels (3: background, cell, nucleus in iPA).
    width : int
        Base channel count; the blocks have ``width × (1, 2, 4, 8, 16)`` channels. 64 is the
        reference and reproduces ``cell_nucleus_unet_best.pth``.
    dropout : float
        Dropout probability on the bottleneck and before the last convolution (0.5 in the
        reference; 0 switches it off). Dropout is active in training mode only.

    Notes
    -----
    The forward pass has no padding logic, like the reference: the height and width of the
    input must be divisible by 16 (288 × 480 slices are).
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 3, *, width: int = 64,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout ({dropout}) must be in [0, 1)")
        self.width = width
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.kind: ModelKind | None = None  # set by build_unet
        f = [width * 2**i for i in range(_DEPTH + 1)]
        self.conv1 = _ConvBlock(in_channels, f[0])
        self.conv2 = _ConvBlock(f[0], f[1], downsample=True)
        self.conv3 = _ConvBlock(f[1], f[2], downsample=True)
        self.conv4 = _ConvBlock(f[2], f[3], downsample=True)
        self.conv5 = _ConvBlock(f[3], f[4], downsample=True)
        self.up_concat5 = _UpConcat(f[4], f[3])
        self.up_concat4 = _UpConcat(f[3], f[2])
        self.up_concat3 = _UpConcat(f[2], f[1])
        self.up_concat2 = _UpConcat(f[1], f[0])
        self.Conv = nn.Conv2d(f[0], n_classes, kernel_size=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits per pixel.

        Parameters
        ----------
        x : (N, C, H, W) float tensor
            ``C == in_channels``; ``H`` and ``W`` divisible by 16.

        Returns
        -------
        (N, n_classes, H, W) float tensor
            Logits (no softmax).
        """
        _check_divisible(x, 2**_DEPTH)
        x1 = self.conv1(x)
        x2 = self.conv2(x1)
        x3 = self.conv3(x2)
        x4 = self.conv4(x3)
        x5 = self.dropout(self.conv5(x4))
        out = self.up_concat5(x5, x4)
        out = self.up_concat4(out, x3)
        out = self.up_concat3(out, x2)
        out = self.up_concat2(out, x1)
        return self.Conv(self.dropout(out))


def _check_divisible(x: torch.Tensor, factor: int) -> None:
    if x.ndim != 4:
        raise ConfigError(f"input must be (N, C, H, W); got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ConfigError(
            f"input height and width ({h}, {w}) must be divisible by {factor} for the "
            "cell/nucleus U-Net (4 poolings, no padding); pad or crop the slices")
