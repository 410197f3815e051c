"""The task graph of the relabel reduction, linear in the number of blocks.

Per block: a meta pick and a crops pick (so the reduction and the edge tasks receive only those),
one edge task (its forward faces), one lookup pick; plus one reduction task. The per-block local
tasks come from the caller under ``(local_name, *index)``. The graph is built as one plain task dict
(building it from ``dask.delayed`` objects merges graphs per task, which is quadratic in the number
of blocks). Keys carry readable prefixes for the dashboard.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._edges import Match, face_edges
from ._grid import BlockGrid
from ._resolve import FaceEdges, resolve

__all__ = ["ReductionKeys", "reduction_tasks"]


@dataclass(frozen=True)
class ReductionKeys:
    """Key names of the reduction's outputs: ``(meta, *i)``, ``(lookup, *i)`` and ``(count,)``."""

    meta: str
    lookup: str
    count: str


def _edges_task(
    crops_a: Mapping[int, np.ndarray],
    forward: list[Mapping[int, np.ndarray]],
    a: int,
    links: list[tuple[int, int]],
    match: Match,
) -> list[FaceEdges]:
    """Edges on all forward faces of block ``a``; ``links`` holds ``(axis, b)`` per neighbour."""
    out = []
    for (axis, b), crops_b in zip(links, forward, strict=True):
        if axis + 1 not in crops_a:  # no halo along this axis: the blocks share no voxels
            continue
        ids_a, ids_b = face_edges(crops_a[axis + 1], crops_b[-(axis + 1)], match)
        out.append(FaceEdges(a, b, ids_a, ids_b))
    return out


def _resolve_task(metas: list[Any], edges: list[list[FaceEdges]], dtype: np.dtype) -> tuple[Any, ...]:
    res = resolve(metas, [e for block in edges for e in block], dtype)
    return (res.n, *res.luts)


def reduction_tasks(
    grid: BlockGrid,
    local_name: str,
    *,
    match: Match,
    dtype: Any,
    prefix: str,
    token: str,
) -> tuple[dict[Any, Any], ReductionKeys]:
    """Tasks that turn per-block local results ``(BlockMeta, crops)`` into the global lookup.

    Parameters
    ----------
    grid : BlockGrid
        Block layout, halo included.
    local_name : str
        Key name of the per-block local tasks, ``(local_name, *index)``, whose results start
        with ``(BlockMeta, crops)``.
    match : Match
        How pieces are matched across faces.
    dtype : dtype
        Dtype of the final labels (overflow is an error).
    prefix, token : str
        Key prefix (``"sxtdask-label"``) and a token unique to this graph.

    Returns
    -------
    tasks : dict
        Task dict to merge into a HighLevelGraph layer.
    keys : ReductionKeys
    """
    keys = ReductionKeys(
        f"{prefix}-meta-{token}", f"{prefix}-lookup-{token}", f"{prefix}-count-{token}"
    )
    resolve_key = f"{prefix}-resolve-{token}"
    faces_name = f"{prefix}-faces-{token}"
    crops_name = f"{prefix}-crops-{token}"
    dsk: dict[Any, Any] = {}
    face_keys = []
    for i in grid.indices():
        dsk[(keys.meta, *i)] = (operator.getitem, (local_name, *i), 0)
        dsk[(crops_name, *i)] = (operator.getitem, (local_name, *i), 1)
        fwd = list(grid.forward_neighbours(i))
        if fwd:
            links = [(axis, grid.linear(j)) for axis, j in fwd]
            forward = [(crops_name, *j) for _, j in fwd]
            dsk[(faces_name, *i)] = (
                _edges_task, (crops_name, *i), forward, grid.linear(i), links, match,
            )
            face_keys.append((faces_name, *i))
    metas = [(keys.meta, *i) for i in grid.indices()]
    dsk[resolve_key] = (_resolve_task, metas, face_keys, np.dtype(dtype))
    for i in grid.indices():
        dsk[(keys.lookup, *i)] = (operator.getitem, resolve_key, 1 + grid.linear(i))
    dsk[(keys.count,)] = (operator.getitem, resolve_key, 0)
    return dsk, keys
