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

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn

from ..errors import ConfigError
from ._checkpoint import CheckpointError, check_fit, load_state_dict_file, strip_module_prefix

__all__ = ["CascadeConfig", "NCXTCascade", "NCXTUNet3D", "StageConfig", "cascade_from_ncxt",
           "infer_ncxt_config", "load_cascade", "load_ncxt", "read_cascade"]

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


# ----------------------------------------------------------------------------------- the cascade


@dataclass(frozen=True)
class StageConfig:
    """One stage of NCXT's cascade: its UNet3D and its tiling.

    Attributes
    ----------
    depth, start_filts : int
        The UNet3D's levels and first filter count.
    instancenorm : bool
    padding : ``"zeros"`` or ``"replicate"``
    block : int
        Tile side at the stage's own (binned) scale; a multiple of ``2**(depth-1)``.
    binning : int
        The stage's binning factor (stage 1: 2 by default; stage 2: 1).
    """

    depth: int = 3
    start_filts: int = 32
    instancenorm: bool = True
    padding: str = "zeros"
    block: int = 32
    binning: int = 1

    def __post_init__(self) -> None:
        for name, lo, hi in (("depth", 1, 6), ("start_filts", 1, 256), ("block", 2, 512),
                             ("binning", 1, 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"cascade stage {name} ({value!r}) must be an integer from "
                                  f"{lo} to {hi}")
        if not isinstance(self.instancenorm, bool):
            raise ConfigError(f"cascade stage instancenorm ({self.instancenorm!r}) must be a bool")
        if self.padding not in PADDINGS:
            raise ConfigError(f"cascade stage padding {self.padding!r} must be one of "
                              f"{', '.join(PADDINGS)}")
        if self.block % 2 ** (self.depth - 1):
            raise ConfigError(f"cascade stage block ({self.block}) must be a multiple of "
                              f"{2 ** (self.depth - 1)} for depth {self.depth}")

    @property
    def extent(self) -> int:
        """The tile's side at full resolution (``block · binning``)."""
        return self.block * self.binning

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CascadeConfig:
    """NCXT's two-stage cascade, as an sxtdask checkpoint records it.

    Attributes
    ----------
    num_classes : int
        Classes of both stages (class 0 is the exterior).
    stage1, stage2 : StageConfig
        Stage 1 runs on the binned tomogram; stage 2 at full resolution on the image and stage 1's
        smoothed probabilities of classes 1..n−1 (NCXT's code: channel 0 is replaced by the image).
    sigma : float
        The Gaussian (voxels) that smooths stage 1's probabilities before stage 2 (NCXT: 2).
    preprocessing : dict
        ``{"name": "lac", "factor": 100.0}`` (NCXT: LAC × 100, chunk-local) or ``{"name":
        "percentile"}`` (sxtdask's: the volume's 0.5/99.5 percentiles → −1/1, clipped to ±2).
    classes : tuple of str
        Class names, index order.
    labels : tuple of int
        The label value written for each class index.
    """

    num_classes: int = 3
    stage1: StageConfig = StageConfig(binning=2)
    stage2: StageConfig = StageConfig()
    sigma: float = 2.0
    preprocessing: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"name": "percentile"})
    classes: tuple[str, ...] = ("exterior", "cytoplasm", "nucleus")
    labels: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or not \
                2 <= self.num_classes <= 64:
            raise ConfigError(f"cascade num_classes ({self.num_classes!r}) must be an integer "
                              "from 2 to 64")
        if self.stage2.binning != 1:
            raise ConfigError(f"cascade stage 2 runs at full resolution (binning 1, not "
                              f"{self.stage2.binning})")
        if not isinstance(self.sigma, (int, float)) or isinstance(self.sigma, bool) or not \
                0 <= self.sigma <= 16:
            raise ConfigError(f"cascade sigma ({self.sigma!r}) must be a number from 0 to 16")
        name = self.preprocessing.get("name") if isinstance(self.preprocessing, dict) else None
        if name not in ("lac", "percentile"):
            raise ConfigError(f"cascade preprocessing {self.preprocessing!r} must name 'lac' or "
                              "'percentile'")
        factor = self.preprocessing.get("factor", 100.0)
        if name == "lac" and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                              or not 0 < factor < 1e9):
            raise ConfigError(f"cascade preprocessing factor ({factor!r}) must be a positive "
                              "number")
        if len(self.classes) != self.num_classes or len(self.labels) != self.num_classes:
            raise ConfigError(f"a cascade of {self.num_classes} classes names {len(self.classes)}"
                              f" classes and {len(self.labels)} label values")
        if len(set(self.labels)) != len(self.labels) or any(
                isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**31
                for v in self.labels):
            raise ConfigError(f"cascade label values {self.labels!r} must be distinct "
                              "non-negative integers")

    def as_meta(self) -> dict[str, Any]:
        """The checkpoint's ``meta`` fields of this configuration."""
        return {"architecture": "NCXTCascade", "num_classes": self.num_classes,
                "classes": list(self.classes), "labels": list(self.labels),
                "preprocessing": dict(self.preprocessing),
                "cascade": {"stage1": self.stage1.as_dict(), "stage2": self.stage2.as_dict(),
                            "sigma": float(self.sigma)}}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str) -> CascadeConfig:
        """The configuration an sxtdask cascade checkpoint's ``meta`` records."""
        try:
            casc = meta["cascade"]
            return cls(num_classes=meta["num_classes"],
                       stage1=StageConfig(**casc["stage1"]), stage2=StageConfig(**casc["stage2"]),
                       sigma=casc.get("sigma", 2.0), preprocessing=dict(meta["preprocessing"]),
                       classes=tuple(meta["classes"]), labels=tuple(meta["labels"]))
        except (KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{source}: not an sxtdask cascade checkpoint (its metadata "
                                  f"lacks or mis-states {err})") from None
        except ConfigError as err:
            raise CheckpointError(f"{source}: {err}") from None


class NCXTCascade(nn.Module):
    """Both stages of a cascade in one module (state-dict keys ``stage1.*`` and ``stage2.*``)."""

    def __init__(self, config: CascadeConfig) -> None:
        super().__init__()
        self.config = config
        n = config.num_classes
        s1, s2 = config.stage1, config.stage2
        self.stage1 = NCXTUNet3D(n, 1, s1.depth, s1.start_filts, s1.instancenorm, s1.padding)
        self.stage2 = NCXTUNet3D(n, n, s2.depth, s2.start_filts, s2.instancenorm, s2.padding)


def read_cascade(path: str | os.PathLike[str]) -> tuple[CascadeConfig, dict[str, torch.Tensor]]:
    """The configuration and the (checked) weights of an sxtdask cascade checkpoint."""
    from ._checkpoint import read_checkpoint

    source = os.fspath(path)
    state, meta = read_checkpoint(source)
    if meta is None or meta.get("architecture") != "NCXTCascade":
        raise CheckpointError(f"{source} is not an sxtdask cascade checkpoint (train one with "
                              "`sxtdask train --arch cascade`, or assemble NCXT stage files "
                              "with sxtdask.models.cascade_from_ncxt)")
    config = CascadeConfig.from_meta(meta, source)
    check_fit(NCXTCascade(config), state, source)
    return config, state


def load_cascade(path: str | os.PathLike[str], device: str = "cpu") -> tuple[NCXTCascade,
                                                                            CascadeConfig]:
    """The cascade of an sxtdask checkpoint, in eval mode on ``device``."""
    config, state = read_cascade(path)
    net = NCXTCascade(config)
    net.load_state_dict(state)
    return net.eval().to(device), config


def cascade_from_ncxt(stage1: str | os.PathLike[str] | Mapping[str, torch.Tensor],
                      stage2: str | os.PathLike[str] | Mapping[str, torch.Tensor],
                      out: str | os.PathLike[str], config: CascadeConfig) -> Any:
    """Write an sxtdask cascade checkpoint from NCXT's two stage state dicts (files or dicts,
    loaded strictly, ``module.`` prefixes removed). NCXT stores no hyperparameters with its
    weights: ``config`` gives them, and the state dicts must fit it.
    """
    from ._checkpoint import save_checkpoint

    net = NCXTCascade(config)
    for name, src in (("stage1", stage1), ("stage2", stage2)):
        part: NCXTUNet3D = getattr(net, name)
        source = f"the {name} state dict" if isinstance(src, Mapping) else os.fspath(src)
        state = strip_module_prefix(src) if isinstance(src, Mapping) else \
            load_state_dict_file(src)
        check_fit(part, state, source)
        part.load_state_dict(state)
    return save_checkpoint(out, net, {"task": "cell", **config.as_meta()})
