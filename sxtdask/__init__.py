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

from ._version import __version__
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
