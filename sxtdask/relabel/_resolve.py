"""The global reduction: offsets → union-find over the edges → one lookup slice per block.

Provisional IDs are 64-bit: block ``k``'s local ID ``i`` becomes ``offset[k] + i``. Connected
components of the edge graph (scipy's union-find in ``csgraph``) are the global objects; they are
numbered ``1..N`` in the raster order of their first voxel, so the final IDs do not depend on the
chunking (and for connected components they equal ``scipy.ndimage.label``'s). Each block then
receives only its own slice of the lookup table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import LabelOverflowError
from ._local import BlockMeta

__all__ = ["FaceEdges", "Resolution", "block_offsets", "resolve"]

logger = logging.getLogger(__name__)

_NO_VOXEL = np.iinfo(np.int64).max


@dataclass(frozen=True)
class FaceEdges:
    """Edges between block ``a`` (local IDs ``ids_a``) and block ``b`` (``ids_b``), by linear index."""

    a: int
    b: int
    ids_a: np.ndarray
    ids_b: np.ndarray


@dataclass(frozen=True)
class Resolution:
    """Result of the reduction: the object count and each block's lookup (local core ID → final)."""

    n: int
    luts: tuple[np.ndarray, ...]


def block_offsets(metas: Sequence[BlockMeta]) -> np.ndarray:
    """Provisional-ID offset of each block: the running sum of its predecessors' ``n_total``."""
    totals = np.array([m.n_total for m in metas], dtype=np.int64)
    return np.concatenate([[0], np.cumsum(totals)])


def _components(n_nodes: int, edges: Sequence[FaceEdges], offsets: np.ndarray) -> np.ndarray:
    """Component index of every provisional ID (node 0 is background)."""
    rows = [e.ids_a.astype(np.int64) + offsets[e.a] for e in edges]
    cols = [e.ids_b.astype(np.int64) + offsets[e.b] for e in edges]
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(r.size, dtype=np.int8), (r, c)), shape=(n_nodes, n_nodes))
    _, comp = connected_components(graph, directed=False)
    return comp


def _first_voxels(metas: Sequence[BlockMeta], offsets: np.ndarray, n_nodes: int) -> np.ndarray:
    first = np.full(n_nodes, _NO_VOXEL, dtype=np.int64)
    for meta, off in zip(metas, offsets, strict=False):
        first[off + 1 : off + 1 + meta.n_core] = meta.first_index
    return first


def _rank_components(comp: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, int]:
    """Final ID of every component (0 for background and voxel-less components)."""
    n_comp = int(comp.max()) + 1
    comp_first = np.full(n_comp, _NO_VOXEL, dtype=np.int64)
    np.minimum.at(comp_first, comp[1:], first[1:])
    comp_first[comp[0]] = _NO_VOXEL
    owned = np.flatnonzero(comp_first != _NO_VOXEL)
    ranked = owned[np.argsort(comp_first[owned], kind="stable")]
    final = np.zeros(n_comp, dtype=np.int64)
    final[ranked] = np.arange(1, ranked.size + 1)
    return final, int(ranked.size)


def resolve(
    metas: Sequence[BlockMeta], edges: Sequence[FaceEdges], dtype: np.dtype | type = np.int32
) -> Resolution:
    """Union-find over all blocks' pieces; one lookup table slice per block.

    Parameters
    ----------
    metas : sequence of BlockMeta
        One per block, in linear block order.
    edges : sequence of FaceEdges
        Edges found on the faces between neighbouring blocks.
    dtype : dtype
        Dtype of the final labels; more objects than it holds raise ``LabelOverflowError``.

    Returns
    -------
    Resolution
        ``n`` objects and, per block, a lookup ``lut`` of length ``n_core + 1`` (``lut[0] == 0``).
    """
    offsets = block_offsets(metas)
    n_nodes = int(offsets[-1]) + 1
    comp = _components(n_nodes, edges, offsets)
    final, n = _rank_components(comp, _first_voxels(metas, offsets, n_nodes))
    limit = int(np.iinfo(dtype).max)
    if n > limit:
        raise LabelOverflowError(
            f"{n} objects do not fit in {np.dtype(dtype).name} labels (at most {limit})"
        )
    lut_all = final[comp].astype(dtype)
    luts = tuple(
        np.concatenate([[0], lut_all[off + 1 : off + 1 + m.n_core]]).astype(dtype)
        for m, off in zip(metas, offsets, strict=False)
    )
    logger.debug("resolved %d pieces in %d blocks into %d objects", n_nodes - 1, len(metas), n)
    return Resolution(n, luts)
