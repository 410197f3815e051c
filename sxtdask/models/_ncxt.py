"""NCXT's 3-D U-Net (ncxt/ncxt_sxtcnn ``UNet3D``), with its state-dict names, written from the facts
of REFERENCE-3D §3.

``depth`` levels (``depth − 1`` max-pools), ``start_filts · 2**i`` filters; each conv block is
Conv3d 3³ (padding 1, zeros or replicate) → optional InstanceNorm3d (no parameters) → ReLU, twice
per level; the decoder up-samples with ConvTranspose3d(2, stride 2) halving channels, then
concatenates (up-sampled, skip). A final 1×1×1 convolution gives logits (no softmax). Keys:
``down_convs.{i}.block{1,2}.conv.*``, ``up_convs.{j}.upconv.*``, ``up_convs.{j}.block{1,2}.conv.*``,
``conv_final.*``. Depth, filters, channels and classes follow from a state dict; InstanceNorm and
the padding are not stored with the weights and are the caller's to give.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from torch import nn

from ..errors import ConfigError
from ._checkpoint import CheckpointError, check_fit, load_state_dict_file, strip_module_prefix

__all__ = ["NCXTUNet3D", "infer_ncxt_config", "load_ncxt"]

PADDINGS = ("zeros", "replicate")


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, instancenorm: bool, padding: str) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1,
                              padding_mode=cast(Literal["zeros", "replicate"], padding))
        self.norm = nn.InstanceNorm3d(cout) if instancenorm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return torch.relu(x)


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int, instancenorm: bool, padding: str) -> None:
        super().__init__()
        self.block1 = _ConvBlock(cin, cout, instancenorm, padding)
        self.block2 = _ConvBlock(cout, cout, instancenorm, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(x))


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int, instancenorm: bool, padding: str) -> None:
        super().__init__()
        self.upconv = nn.ConvTranspose3d(cin, cout, kernel_size=2, stride=2)
        self.block1 = _ConvBlock(2 * cout, cout, instancenorm, padding)
        self.block2 = _ConvBlock(cout, cout, instancenorm, padding)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(torch.cat((self.upconv(x), skip), 1)))


class NCXTUNet3D(nn.Module):
    """NCXT's UNet3D.

    Parameters
    ----------
    num_classes : int
    in_channels : int
        1 for stage 1; the number of classes for a cascade's stage 2 (image + n − 1
        probabilities).
    depth : int
        Levels (``depth − 1`` poolings): spatial sizes must be multiples of ``2**(depth-1)``.
    start_filts : int
    instancenorm : bool
    padding : ``"zeros"`` or ``"replicate"``
    """

    def __init__(self, num_classes: int, in_channels: int = 1, depth: int = 3,
                 start_filts: int = 32, instancenorm: bool = True, padding: str = "zeros") -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ConfigError(f"padding {padding!r} must be one of {', '.join(PADDINGS)}")
        if depth < 1 or start_filts < 1 or num_classes < 1 or in_channels < 1:
            raise ConfigError("depth, start_filts, num_classes and in_channels must be positive")
        self.num_classes, self.in_channels, self.depth = num_classes, in_channels, depth
        self.start_filts, self.instancenorm, self.padding = start_filts, instancenorm, padding
        self.down_convs = nn.ModuleList()
        outs = in_channels
        for i in range(depth):
            ins, outs = outs, start_filts * 2 ** i
            self.down_convs.append(_Down(ins, outs, instancenorm, padding))
        self.up_convs = nn.ModuleList()
        for _ in range(depth - 1):
            ins, outs = outs, outs // 2
            self.up_convs.append(_Up(ins, outs, instancenorm, padding))
        self.conv_final = nn.Conv3d(outs, num_classes, 1)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** (self.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, down in enumerate(self.down_convs):
            x = down(x)
            skips.append(x)
            if i < self.depth - 1:
                x = nn.functional.max_pool3d(x, 2)
        for j, up in enumerate(self.up_convs):
            x = up(skips[-(j + 2)], x)
        return self.conv_final(x)


def infer_ncxt_config(state: Mapping[str, torch.Tensor], source: str = "the state dict"
                      ) -> dict[str, Any]:
    """``num_classes``, ``in_channels``, ``depth`` and ``start_filts`` of an NCXT state dict."""
    state = strip_module_prefix(state)
    first = state.get("down_convs.0.block1.conv.weight")
    final = state.get("conv_final.weight")
    if first is None or final is None or first.ndim != 5:
        raise CheckpointError(f"{source} is not an NCXT UNet3D state dict (no "
                              "down_convs.0.block1.conv.weight / conv_final.weight 3-D kernels)")
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("down_convs."))
    return {"num_classes": int(final.shape[0]), "in_channels": int(first.shape[1]),
            "depth": depth, "start_filts": int(first.shape[0])}


def load_ncxt(path_or_state: str | os.PathLike[str] | Mapping[str, torch.Tensor], *,
              instancenorm: bool = True, padding: str = "zeros") -> NCXTUNet3D:
    """An NCXT UNet3D with the weights of a file or state dict, loaded strictly (a ``module.``
    prefix is removed). InstanceNorm and padding are not in the file: give them.
    """
    if isinstance(path_or_state, Mapping):
        source, state = "the state dict", strip_module_prefix(path_or_state)
    else:
        source, state = os.fspath(path_or_state), load_state_dict_file(path_or_state)
    net = NCXTUNet3D(**infer_ncxt_config(state, source), instancenorm=instancenorm,
                     padding=padding)
    check_fit(net, state, source)
    net.load_state_dict(state)
    return net.eval()
