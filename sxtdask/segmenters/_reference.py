"""The reference pipeline's segmenter classes, by their documented names.

``SXTCellSegmenter(device="cuda")``, ``SXTMitoSegmenter``, ``SXTISGSegmenter`` and
``SXTISGMaskRCNNSegmenter`` are sxtdask's segmenters with the task fixed, so the reference's
snippets run as written::

    seg = SXTCellSegmenter(device="cuda")
    seg.load_model()            # the bundled weights, or load_model("cell_unet_best.pth")
    masks = seg.predict(volume)  # {"cell_mask", "nucleus_mask"}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ._maskrcnn import MaskRCNNISG
from ._names import Task
from ._unet import UNetSegmenter

__all__ = ["SXTCellSegmenter", "SXTISGMaskRCNNSegmenter", "SXTISGSegmenter", "SXTMitoSegmenter"]


@dataclass(frozen=True)
class SXTCellSegmenter(UNetSegmenter):
    """The cell/nucleus U-Net; ``predict`` returns ``{"cell_mask", "nucleus_mask"}``."""

    task: Task = dataclasses.field(default=Task.CELL, init=False)


@dataclass(frozen=True)
class SXTMitoSegmenter(UNetSegmenter):
    """The mitochondria U-Net; ``predict`` returns a binary (Z, Y, X) mask."""

    task: Task = dataclasses.field(default=Task.MITO, init=False)


@dataclass(frozen=True)
class SXTISGSegmenter(UNetSegmenter):
    """The ISG U-Net; ``predict(volume, threshold=0.5)`` returns a binary (Z, Y, X) mask."""

    task: Task = dataclasses.field(default=Task.ISG, init=False)


@dataclass(frozen=True)
class SXTISGMaskRCNNSegmenter(MaskRCNNISG):
    """The ISG Mask R-CNN (tiled, linked across slices); ``predict`` returns (Z, Y, X) instance
    labels numbered ``1..n``.
    """
