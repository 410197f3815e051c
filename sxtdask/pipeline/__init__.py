"""The one pipeline: a tomogram's statistics, segmentation, relabel, pyramids and metrics as one
lazy graph (:func:`segment_tomogram`), which ``segment``, ``archive`` and ``demo`` all run.
"""

from __future__ import annotations

from ._measure import METRIC_COLUMNS, summary_metrics
from ._tomogram import TomogramRun, segment_tomogram

__all__ = ["METRIC_COLUMNS", "TomogramRun", "segment_tomogram", "summary_metrics"]
