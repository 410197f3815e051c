"""Global relabelling: per-chunk labels → one set of IDs unique over the whole volume."""

from ._edges import Match
from ._grid import BlockGrid
from ._label import label

__all__ = ["BlockGrid", "Match", "label"]
