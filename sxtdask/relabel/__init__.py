"""Global relabelling: per-chunk labels → one set of IDs unique over the whole volume.

``label`` is the public face (``scipy.ndimage.label``'s contract on Dask arrays). The engine
builds its stitching from the same pieces: the block grid, each block's renumbering
(``renumber_block`` → ``BlockResult``) and the reduction's tasks (``reduction_tasks``).
"""

from ._edges import Match, best_pairs
from ._graph import ReductionKeys, reduction_tasks
from ._grid import BlockGrid, Index
from ._label import label
from ._local import BlockMeta, BlockResult, renumber_block

__all__ = [
    "BlockGrid",
    "BlockMeta",
    "BlockResult",
    "Index",
    "Match",
    "ReductionKeys",
    "best_pairs",
    "label",
    "reduction_tasks",
    "renumber_block",
]
