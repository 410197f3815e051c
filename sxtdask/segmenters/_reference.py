"""The reference pipeline's segmenter classes, by their documented names.

``SXTCellSegmenter(device="cuda")``, ``SXTMitoSegmenter``, ``SXTISGSegmenter`` and
``SXTISGMaskRCNNSegmenter`` are sxtdask's segmenters with the task fixed, so the reference's
snippets run as written::

    seg = SXTCellSegmenter(device="cuda")
    seg.load_model()            # the bundled weights, or load_model("cell_unet_best.pth")
    masks = seg.predict(volume)  # {"cell_mask", "nucleus_mask"}
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ._maskrcnn import MaskRCNNISG
from ._names import Task
from ._unet import UNetSegmenter

__all__ = ["SXTCellSegmenter", "SXTISGMaskRCNNSegmenter", "SXTISGSegmenter", "SXTMitoSegmenter"]


@dataclass(frozen=True)
class _FixedTask(UNetSegmenter):
    _task = Task.CELL

    def __post_init__(self) -> None:
        if self.task is not self._task:
            if self.task is not Task.CELL:  # the field's default, set on the base class
                raise ConfigError(f"{type(self).__name__} segments {self._task.value}, not "
                                  f"{self.task.value}")
            object.__setattr__(self, "task", self._task)
        super().__post_init__()


@dataclass(frozen=True)
class SXTCellSegmenter(_FixedTask):
    """The cell/nucleus U-Net; ``predict`` returns ``{"cell_mask", "nucleus_mask"}``."""

    _task = Task.CELL


@dataclass(frozen=True)
class SXTMitoSegmenter(_FixedTask):
    """The mitochondria U-Net; ``predict`` returns a binary (Z, Y, X) mask."""

    _task = Task.MITO


@dataclass(frozen=True)
class SXTISGSegmenter(_FixedTask):
    """The ISG U-Net; ``predict(volume, threshold=0.5)`` returns a binary (Z, Y, X) mask."""

    _task = Task.ISG


@dataclass(frozen=True)
class SXTISGMaskRCNNSegmenter(MaskRCNNISG):
    """The ISG Mask R-CNN (tiled, linked across slices); ``predict`` returns (Z, Y, X) instance
    labels numbered ``1..n``."""
