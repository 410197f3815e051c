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

import importlib
from typing import TYPE_CHECKING, Any

from ._names import Method, Task
from ._registry import (  # light: a method's class is imported when a segmenter is made
    REGISTRY,
    MethodEntry,
    create_segmenter,
    default_method,
    entry,
    make_segmenter,
    methods_for,
    trainable,
)

if TYPE_CHECKING:
    from ._base import BlockContext, OutputKind, OutputSpec, Segmenter, SegmenterInfo
    from ._cascade import (
        CascadeSegmenter,
        fuse_tiles,
        gaussian_radius,
        tile_starts,
        tile_window,
    )
    from ._classical import ClassicalISG, split_granules
    from ._combined import CombinedSegmenter
    from ._linking import link_slices
    from ._maskrcnn import MaskRCNNISG, maskrcnn_max_size, prepare_maskrcnn_slices
    from ._reference import (
        SXTCellSegmenter,
        SXTISGMaskRCNNSegmenter,
        SXTISGSegmenter,
        SXTMitoSegmenter,
    )
    from ._renamed import RenamedSegmenter, check_label_name, rename_outputs
    from ._resize import Taps, axis_taps, resize_block, resize_dask, resize_mode
    from ._tiles import (
        Detections,
        Tile,
        segment_slice_tiled,
        stitch_tile_detections,
        tile_grid,
    )
    from ._unet import LAC_FACTOR, PREPROCESSING, UNetSegmenter, pad_reflect, prepare_slices
    from ._unet3d import (
        UNet3DSegmenter,
        cell_masks,
        clean_labels,
        fill_labels,
        grid_shape,
        normalise_grid,
        patch_starts,
    )
    from ._unet_instances import UNetISGInstances

#: The modules that need NumPy, SciPy or Dask, and their public names: each is imported the
#: first time one of its names is used (PEP 562), so that the names and the registry (what the
#: command line's options offer) come without them. A new public name goes here, in the
#: ``TYPE_CHECKING`` imports above and in ``__all__``.
_LAZY = {
    "_base": ("BlockContext", "OutputKind", "OutputSpec", "Segmenter", "SegmenterInfo"),
    "_classical": ("ClassicalISG", "split_granules"),
    "_combined": ("CombinedSegmenter",),
    "_linking": ("link_slices",),
    "_maskrcnn": ("MaskRCNNISG", "maskrcnn_max_size", "prepare_maskrcnn_slices"),
    "_reference": ("SXTCellSegmenter", "SXTISGMaskRCNNSegmenter", "SXTISGSegmenter",
                   "SXTMitoSegmenter"),
    "_renamed": ("RenamedSegmenter", "check_label_name", "rename_outputs"),
    "_tiles": ("Detections", "Tile", "segment_slice_tiled", "stitch_tile_detections",
               "tile_grid"),
    "_unet": ("LAC_FACTOR", "PREPROCESSING", "UNetSegmenter", "pad_reflect", "prepare_slices"),
    "_unet_instances": ("UNetISGInstances",),
    "_unet3d": ("UNet3DSegmenter", "cell_masks", "clean_labels", "fill_labels", "grid_shape",
                "normalise_grid", "patch_starts"),
    "_cascade": ("CascadeSegmenter", "fuse_tiles", "gaussian_radius", "tile_starts",
                 "tile_window"),
    "_resize": ("Taps", "axis_taps", "resize_block", "resize_dask", "resize_mode"),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    """A public name of a heavy module, imported on first use (then a plain attribute)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "BlockContext",
    "CascadeSegmenter",
    "ClassicalISG",
    "CombinedSegmenter",
    "Detections",
    "LAC_FACTOR",
    "MaskRCNNISG",
    "Method",
    "MethodEntry",
    "OutputKind",
    "OutputSpec",
    "PREPROCESSING",
    "REGISTRY",
    "RenamedSegmenter",
    "SXTCellSegmenter",
    "SXTISGMaskRCNNSegmenter",
    "SXTISGSegmenter",
    "SXTMitoSegmenter",
    "Segmenter",
    "SegmenterInfo",
    "Taps",
    "Task",
    "Tile",
    "UNet3DSegmenter",
    "UNetISGInstances",
    "UNetSegmenter",
    "axis_taps",
    "cell_masks",
    "check_label_name",
    "clean_labels",
    "create_segmenter",
    "default_method",
    "entry",
    "fill_labels",
    "fuse_tiles",
    "gaussian_radius",
    "grid_shape",
    "link_slices",
    "make_segmenter",
    "maskrcnn_max_size",
    "normalise_grid",
    "methods_for",
    "pad_reflect",
    "patch_starts",
    "prepare_maskrcnn_slices",
    "prepare_slices",
    "rename_outputs",
    "resize_block",
    "resize_dask",
    "resize_mode",
    "segment_slice_tiled",
    "split_granules",
    "stitch_tile_detections",
    "tile_grid",
    "tile_starts",
    "tile_window",
    "trainable",
]
