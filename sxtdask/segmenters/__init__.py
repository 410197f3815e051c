"""Segmenters: one typed interface (``Segmenter``) for every task and method, and one registry.

- :class:`Task`, :class:`Method`: the names (``StrEnum``; the command line's words).
- :data:`REGISTRY`, :func:`make_segmenter`, :func:`create_segmenter`: which class does what, and
  building one (the reference API's ``create_segmenter("sxt", task=...)``).
- :class:`Segmenter` and :class:`SegmenterInfo`: what the engine runs, and how a segmenter
  describes itself (outputs, halo, context radius, model files, device).
- The methods: :class:`UNetSegmenter`, :class:`UNetISGInstances`, :class:`MaskRCNNISG`,
  :class:`ClassicalISG`, and :class:`CombinedSegmenter` (several over one read of each chunk).
- The reference classes: :class:`SXTCellSegmenter`, :class:`SXTMitoSegmenter`,
  :class:`SXTISGSegmenter`, :class:`SXTISGMaskRCNNSegmenter`.
"""

from ._base import OutputKind, OutputSpec, Segmenter, SegmenterInfo
from ._classical import ClassicalISG, split_granules
from ._combined import CombinedSegmenter
from ._linking import link_slices
from ._maskrcnn import MaskRCNNISG, maskrcnn_max_size, prepare_maskrcnn_slices
from ._names import Method, Task
from ._reference import (
    SXTCellSegmenter,
    SXTISGMaskRCNNSegmenter,
    SXTISGSegmenter,
    SXTMitoSegmenter,
)
from ._registry import (
    REGISTRY,
    MethodEntry,
    create_segmenter,
    default_method,
    entry,
    make_segmenter,
    methods_for,
    trainable,
)
from ._tiles import (
    Detections,
    Tile,
    segment_slice_tiled,
    stitch_tile_detections,
    tile_grid,
)
from ._unet import LAC_FACTOR, PREPROCESSING, UNetSegmenter, pad_reflect, prepare_slices
from ._unet_instances import UNetISGInstances

__all__ = [
    "LAC_FACTOR",
    "PREPROCESSING",
    "REGISTRY",
    "ClassicalISG",
    "CombinedSegmenter",
    "Detections",
    "MaskRCNNISG",
    "Method",
    "MethodEntry",
    "OutputKind",
    "OutputSpec",
    "SXTCellSegmenter",
    "SXTISGMaskRCNNSegmenter",
    "SXTISGSegmenter",
    "SXTMitoSegmenter",
    "Segmenter",
    "SegmenterInfo",
    "Task",
    "Tile",
    "UNetISGInstances",
    "UNetSegmenter",
    "create_segmenter",
    "default_method",
    "entry",
    "link_slices",
    "make_segmenter",
    "maskrcnn_max_size",
    "methods_for",
    "pad_reflect",
    "prepare_maskrcnn_slices",
    "prepare_slices",
    "segment_slice_tiled",
    "split_granules",
    "stitch_tile_detections",
    "tile_grid",
    "trainable",
]
