"""Which U-Net a checkpoint holds, and the reference configuration of each."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["REFERENCE_CONFIGS", "ModelKind", "UNetConfig"]


class ModelKind(enum.Enum):
    """The iPA U-Nets sxtdask can build and load.

    ``CELL_NUCLEUS`` is the Cell-Segmentation (Li et al. 2022) ``Unet`` (cell, nucleus and
    background); ``MITO`` and ``ISG`` are one U-Net family (transposed-conv upsampling,
    bias-free double 3×3 convolutions) that differ only in their input channels.
    """

    CELL_NUCLEUS = "cell"
    MITO = "mito"
    ISG = "isg"


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a U-Net: its kind and three sizes.

    Attributes
    ----------
    kind : ModelKind
    width : int
        Base channel count (the first block's output channels); deeper blocks have 2, 4, 8 and
        16 times as many.
    in_channels : int
    n_classes : int
    """

    kind: ModelKind
    width: int
    in_channels: int
    n_classes: int

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        for name in ("width", "in_channels", "n_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} ({value!r}) must be a positive integer")

    def as_dict(self) -> dict[str, object]:
        """``{"kind", "width", "in_channels", "n_classes"}``; the kind as a :class:`ModelKind`."""
        return {"kind": self.kind, "width": self.width, "in_channels": self.in_channels,
                "n_classes": self.n_classes}


#: The configurations of the iPA checkpoints (``*_unet_best.pth``).
REFERENCE_CONFIGS: dict[ModelKind, UNetConfig] = {
    ModelKind.CELL_NUCLEUS: UNetConfig(ModelKind.CELL_NUCLEUS, 64, 1, 3),
    ModelKind.MITO: UNetConfig(ModelKind.MITO, 64, 3, 2),
    ModelKind.ISG: UNetConfig(ModelKind.ISG, 64, 1, 2),
}
