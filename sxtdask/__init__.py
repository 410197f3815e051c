"""sxtdask: segment soft X-ray tomograms of whole cells at archive scale, on Dask.

The public API:

- ``open_volume``, ``write_image``, ``open_image``, ``open_labels``: tomogram files ↔ OME-Zarr.
- ``make_phantom``, ``write_phantom``: synthetic SXT cells with ground truth.
- ``global_stats``: whole-volume intensity statistics (one reduction).
- ``label``: connected components of a Dask array, equal to ``scipy.ndimage.label``.
- ``create_segmenter``: the reference-style API (``.load_model(path)``, ``.predict(volume)``,
  ``.model``) for cell, mito, isg, isg_instances, isg_maskrcnn and isg_classical; the reference
  classes ``SXTCellSegmenter``, ``SXTMitoSegmenter``, ``SXTISGSegmenter`` and
  ``SXTISGMaskRCNNSegmenter`` (each taking ``device=``); ``Task``, ``Method`` and
  ``make_segmenter`` (the registry's names and builder).
- ``ClassicalISG``: seeded-watershed ISG instances; ``segment_array`` / ``segment_store`` run any
  segmenter chunk by chunk with global instance IDs.
- ``instance_table`` / ``regionprops_table``: per-instance statistics from chunked partials.
- ``connect``, ``ClusterConfig``: a local cluster or an existing scheduler.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .engine import ClusterConfig, connect, segment_array, segment_store
    from .errors import SxtdaskError
    from .io import open_image, open_labels, open_volume, write_image, write_labels
    from .measure import instance_table, match_instances, regionprops_table
    from .phantoms import make_phantom, write_phantom
    from .relabel import label
    from .segmenters import (
        ClassicalISG,
        Method,
        Segmenter,
        SXTCellSegmenter,
        SXTISGMaskRCNNSegmenter,
        SXTISGSegmenter,
        SXTMitoSegmenter,
        Task,
        create_segmenter,
        make_segmenter,
    )
    from .stats import IntensityStats, global_stats

#: Where each public name lives. ``import sxtdask`` imports none of them (nor NumPy, Dask or
#: torch): a name's sub-package is imported the first time the name is used (PEP 562), so the
#: command line's help and ``sxtdask.__version__`` stay instant.
_LAZY = {
    "engine": ("ClusterConfig", "connect", "segment_array", "segment_store"),
    "errors": ("SxtdaskError",),
    "io": ("open_image", "open_labels", "open_volume", "write_image", "write_labels"),
    "measure": ("instance_table", "match_instances", "regionprops_table"),
    "phantoms": ("make_phantom", "write_phantom"),
    "relabel": ("label",),
    "segmenters": ("ClassicalISG", "Method", "Segmenter", "SXTCellSegmenter",
                   "SXTISGMaskRCNNSegmenter", "SXTISGSegmenter", "SXTMitoSegmenter", "Task",
                   "create_segmenter", "make_segmenter"),
    "stats": ("IntensityStats", "global_stats"),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    """A public name, imported from its sub-package on first use (then a plain attribute)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "ClassicalISG",
    "ClusterConfig",
    "IntensityStats",
    "Method",
    "SXTCellSegmenter",
    "SXTISGMaskRCNNSegmenter",
    "SXTISGSegmenter",
    "SXTMitoSegmenter",
    "Segmenter",
    "SxtdaskError",
    "Task",
    "__version__",
    "connect",
    "create_segmenter",
    "global_stats",
    "instance_table",
    "label",
    "make_phantom",
    "make_segmenter",
    "match_instances",
    "open_image",
    "open_labels",
    "open_volume",
    "regionprops_table",
    "segment_array",
    "segment_store",
    "write_image",
    "write_labels",
    "write_phantom",
]
