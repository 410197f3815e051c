"""The U-Net family of iPA's mitochondria and ISG networks (``mito_unet``, ``isg_unet``).

Parameter names and shapes equal those of iPA's ``mito_unet_best.pth`` (3 input channels) and
``isg_unet_best.pth`` (1 input channel) at ``width=64``; the layout is that of the widely used
``UNet(n_channels, n_classes, bilinear=False)``:

- ``inc.double_conv``: conv3×3 (no bias), BN, ReLU, conv3×3 (no bias), BN, ReLU
  (parameters at indices 0, 1, 3, 4).
- ``down1`` … ``down4``: ``maxpool_conv`` = (max-pool ×2, double conv); parameters under
  ``maxpool_conv.1.double_conv``.
- ``up1`` … ``up4``: ``up`` = 2×2 transposed convolution, stride 2, halving the channels; the
  result is zero-padded to the skip connection's size, concatenated as ``[skip, upsampled]``,
  then ``conv.double_conv``.
- ``outc.conv``: the final 1×1 convolution (with bias) to the classes.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ._kinds import ModelKind

__all__ = ["UNet"]

logger = logging.getLogger(__name__)


class _DoubleConv(nn.Module):
    """conv3×3-BN-ReLU twice, convolutions without bias; parameters under ``double_conv``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class _Down(nn.Module):
    """Max-pool ×2, then a double convolution (``maxpool_conv.1``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), _DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class _Up(nn.Module):
    """Transposed-conv ×2 upsampling, pad to the skip's size, ``cat([skip, up])``, double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = _DoubleConv(in_channels, out_channels)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(deep)
        dy = skip.shape[-2] - up.shape[-2]
        dx = skip.shape[-1] - up.shape[-1]
        if dy or dx:
            up = F.pad(up, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, up], dim=1))


class _OutConv(nn.Module):
    """The final 1×1 convolution (``outc.conv``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """iPA's mitochondria / ISG U-Net (transposed-conv upsampling, ``bilinear=False``).

    Parameters
    ----------
    in_channels : int
        Input channels: 3 for iPA's ``mito_unet``, 1 for ``isg_unet``.
    n_classes : int
        Output channels (2 in iPA: background and organelle).
    width : int
        Base channel count; the blocks have ``width × (1, 2, 4, 8, 16)`` channels. 64 is the
        reference and reproduces the iPA checkpoints.

    Notes
    -----
    Any input of at least 16 × 16 pixels works: where a size is not divisible by 16, the
    upsampled maps are zero-padded to their skip connection's size, as in the reference.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, *, width: int = 64) -> None:
        super().__init__()
        self.width = width
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.kind: ModelKind | None = None  # set by build_unet
        f = [width * 2**i for i in range(5)]
        self.inc = _DoubleConv(in_channels, f[0])
        self.down1 = _Down(f[0], f[1])
        self.down2 = _Down(f[1], f[2])
        self.down3 = _Down(f[2], f[3])
        self.down4 = _Down(f[3], f[4])
        self.up1 = _Up(f[4], f[3])
        self.up2 = _Up(f[3], f[2])
        self.up3 = _Up(f[2], f[1])
        self.up4 = _Up(f[1], f[0])
        self.outc = _OutConv(f[0], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits per pixel.

        Parameters
        ----------
        x : (N, C, H, W) float tensor
            ``C == in_channels``; ``H, W >= 16``.

        Returns
        -------
        (N, n_classes, H, W) float tensor
            Logits (no softmax).
        """
        if x.ndim != 4 or min(x.shape[-2:]) < 16:
            raise ConfigError(
                f"input must be (N, C, H, W) with H, W >= 16; got shape {tuple(x.shape)}")
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        out = self.up1(x5, x4)
        out = self.up2(out, x3)
        out = self.up3(out, x2)
        out = self.up4(out, x1)
        return self.outc(out)
