"""Interpolation of sparse labels: Biomedisa's smart interpolation (random walks) on CPUs, and a
deterministic shape-based interpolation, chunk by chunk on Dask.

:func:`summarize_labels` reads which slices are labelled (one lazy pass over the labels);
:func:`interpolate_labels` returns the interpolated labels (and Biomedisa's uncertainty map) as
lazy Dask arrays that do not depend on the chunking or the number of workers.
"""

from ._config import AXES, Axis, InterpolationConfig, Method
from ._graph import DEFAULT_DEPTH, Interpolation, block_grid, interpolate_labels
from ._output import FILE_SUFFIXES, block_counts, block_writes, tomogram_file, uncertainty_path
from ._slices import MAX_CLASSES, LabelSummary, check_summary, summarize_labels
from ._walk import uncertainty

__all__ = [
    "AXES",
    "DEFAULT_DEPTH",
    "FILE_SUFFIXES",
    "MAX_CLASSES",
    "Axis",
    "Interpolation",
    "InterpolationConfig",
    "LabelSummary",
    "Method",
    "block_counts",
    "block_grid",
    "block_writes",
    "check_summary",
    "interpolate_labels",
    "summarize_labels",
    "tomogram_file",
    "uncertainty",
    "uncertainty_path",
]
