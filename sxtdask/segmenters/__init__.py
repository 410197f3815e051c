"""Segmenters: one interface (``Segmenter``) for every task and method."""

from ._base import OutputKind, OutputSpec, Segmenter, Task
from ._classical import ClassicalISG, split_granules
from ._factory import CombinedSegmenter, UNetISGInstances, create_segmenter
from ._linking import link_slices
from ._maskrcnn import MaskRCNNISG
from ._tiles import (
    Detections,
    Tile,
    segment_slice_tiled,
    stitch_tile_detections,
    tile_grid,
)
from ._unet import UNetSegmenter

__all__ = [
    "ClassicalISG",
    "CombinedSegmenter",
    "Detections",
    "MaskRCNNISG",
    "Tile",
    "OutputKind",
    "OutputSpec",
    "Segmenter",
    "Task",
    "UNetISGInstances",
    "UNetSegmenter",
    "create_segmenter",
    "link_slices",
    "segment_slice_tiled",
    "split_granules",
    "stitch_tile_detections",
    "tile_grid",
]
