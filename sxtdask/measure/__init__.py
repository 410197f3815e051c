"""Per-instance morphometrics computed chunk by chunk: block partials plus a tree reduction.

``instance_table`` builds a lazy graph whose result is a tidy table (one row per instance, units in
the column names, like :func:`skimage.measure.regionprops_table`); ``write_table`` stores it as CSV
or Parquet.
"""

from __future__ import annotations

from sxtdask.measure._match import MatchResult, match_instances
from sxtdask.measure._table import TABLE_COLUMNS, instance_table, regionprops_table
from sxtdask.measure._write import write_table

__all__ = [
    "TABLE_COLUMNS",
    "MatchResult",
    "instance_table",
    "match_instances",
    "regionprops_table",
    "write_table",
]
