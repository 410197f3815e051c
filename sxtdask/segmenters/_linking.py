"""Link 2-D instances of consecutive slices into 3-D instances.

A 2-D detector (iPA's ISG Mask R-CNN) labels each slice on its own. The reference pipeline gives
every 2-D detection a new ID; sxtdask links them across slices instead:

* 2-D objects ``a`` in slice ``z`` and ``b`` in slice ``z + 1`` are matched when each is the
  other's largest overlap (by pixel count; ties go to the smaller 2-D ID); the matched objects
  are set aside and the rule is applied again to the rest, until nothing more matches (this is
  the greedy maximum-overlap matching: largest overlaps first, one partner per object and
  direction). A matched pair is linked when its overlap covers at least ``min_overlap`` of the
  smaller of the two. The later rounds keep an object whose best partner was taken by a stronger
  pair — the last section of a granule whose cap reaches over a touching neighbour — on its own
  granule instead of splitting it off;
* links chain into 3-D instances (connected components). Mutual best is one-to-one, so each 2-D
  object links to at most one object in the next slice and one in the previous: every instance is
  a run of one 2-D object per slice over consecutive slices, never a branching tree;
* instances spanning fewer than ``min_slices`` slices are dropped; the rest are numbered ``1..N`` in
  the raster order of their first voxel.

What the rule guarantees for two touching 3-D objects A and B:

* they stay two when, wherever a section of A and a section of B overlap on neighbouring
  slices, at least one of the two overlaps its own object's section in the other slice by more
  pixels (the stronger own pair is matched first, so the cross pair never is), or their overlap
  is below ``min_overlap`` of the smaller. That holds for objects touching side by side in a
  slice, and for objects stacked in z whose contact surface is inclined to the slices: where A's
  last section reaches over B's, B's own section on that slice is B's better partner.
* they are chained into one when A ends on slice ``z`` and B begins on slice ``z + 1`` right below
  it (a contact surface parallel to the slices): A's last and B's first sections have nothing
  else to compete with, so they are mutual best. Separating those needs shape (a neck in the
  area profile), which overlap alone cannot see.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import ConfigError, LabelOverflowError
from ..relabel import best_pairs as _best
from ._tiles import raster_relabel

__all__ = ["link_slices"]

logger = logging.getLogger(__name__)

_MAX_NODES = 2**31  # pair codes ``a * n + b`` must fit in int64; IDs in uint32


def _check_labels(labels2d: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels2d)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            f"labels2d must be a (Z, Y, X) integer array; got {labels.ndim}-D {labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise ConfigError(f"labels2d must not be negative; found {labels.min()}")
    return labels


def _node_offsets(labels: np.ndarray) -> np.ndarray:
    """First node of each slice ``(Z + 1,)``: slice ``z``'s label ``l`` is node ``off[z] + l``.

    Each slice gets ``max + 1`` nodes, its background included (background nodes have no pixels
    counted and never link).
    """
    per_slice = labels.reshape(labels.shape[0], -1).max(axis=1, initial=0).astype(np.int64) + 1
    offsets = np.concatenate([[0], np.cumsum(per_slice)])
    if offsets[-1] > _MAX_NODES:
        raise LabelOverflowError(
            f"the slices hold {offsets[-1]} 2-D IDs in all, more than link_slices supports "
            f"({_MAX_NODES}); relabel each slice 1..n first"
        )
    return offsets


def _node_sizes(labels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Pixel count of every node ``(n_nodes,)``; background nodes count 0."""
    sizes = np.zeros(int(offsets[-1]), dtype=np.int64)
    for z in range(labels.shape[0]):
        counts = np.bincount(labels[z].ravel().astype(np.int64, copy=False))
        counts[0] = 0
        sizes[offsets[z] : offsets[z] + counts.size] = counts
    return sizes


def _pair_counts(
    labels: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every overlapping pair (node in ``z``, node in ``z + 1``) and its overlap, pixels."""
    n = np.int64(offsets[-1])
    codes = []
    for z in range(labels.shape[0] - 1):
        a, b = labels[z], labels[z + 1]
        both = (a != 0) & (b != 0)
        pa = a[both].astype(np.int64) + offsets[z]
        codes.append(pa * n + (b[both].astype(np.int64) + offsets[z + 1]))
    all_codes = np.concatenate(codes) if codes else np.zeros(0, np.int64)
    keys, counts = np.unique(all_codes, return_counts=True)
    return keys // n, keys % n, counts


def _match(pa: np.ndarray, pb: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """Greedy matching of pairs by overlap, as rounds of mutual best among unmatched nodes.

    Round one matches every mutual-best pair; each later round does the same among pairs whose
    two nodes are both still unmatched. With ties broken by the smaller node, this is the greedy
    maximum-overlap matching (largest overlap first). Returns a mask of the matched pairs.
    """
    matched = np.zeros(pa.size, dtype=bool)
    free = np.ones(pa.size, dtype=bool)
    while free.any():
        idx = np.flatnonzero(free)
        a, b, c = pa[idx], pb[idx], counts[idx]
        new = idx[_best(a, b, c) & _best(b, a, c)]
        matched[new] = True
        used_a, used_b = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        used_a[pa[new]], used_b[pb[new]] = True, True
        free &= ~used_a[pa] & ~used_b[pb]
    return matched


def _links(
    labels: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, min_overlap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Node pairs of neighbouring slices that are matched with enough overlap."""
    pa, pb, counts = _pair_counts(labels, offsets)
    enough = counts >= min_overlap * np.minimum(sizes[pa], sizes[pb])
    keep = _match(pa, pb, counts, sizes.size) & enough
    return pa[keep], pb[keep]


def link_slices(
    labels2d: np.ndarray, *, min_overlap: float = 0.3, min_slices: int = 1
) -> np.ndarray:
    """3-D instances from per-slice 2-D instance labels, linked by greedy (mutual-best) matching.

    Parameters
    ----------
    labels2d : (Z, Y, X) ndarray of int
        Each slice's 2-D instance IDs, independent between slices (0 background; IDs need not
        be consecutive, but arrays as long as the sum of the per-slice maxima are allocated).
    min_overlap : float
        Least overlap of two linked 2-D objects, as a fraction of the smaller one (in [0, 1]).
    min_slices : int
        3-D instances spanning fewer slices are dropped (set to 0).

    Returns
    -------
    (Z, Y, X) ndarray of uint32
        3-D instance IDs ``1..N`` in raster order of each instance's first voxel, 0 background.
        The rules and what they guarantee are in the module docstring.

    Examples
    --------
    >>> stack = np.array([[[1, 1, 0, 2]], [[1, 1, 0, 0]], [[0, 0, 0, 1]]])
    >>> link_slices(stack)[:, 0]
    array([[1, 1, 0, 2],
           [1, 1, 0, 0],
           [0, 0, 0, 3]], dtype=uint32)
    """
    labels = _check_labels(labels2d)
    if not 0 <= min_overlap <= 1:
        raise ConfigError(f"min_overlap ({min_overlap}) must lie in [0, 1]")
    if min_slices < 1:
        raise ConfigError(f"min_slices ({min_slices}) must be at least 1")
    if labels.shape[0] == 0:
        return np.zeros(labels.shape, dtype=np.uint32)
    offsets = _node_offsets(labels)
    sizes = _node_sizes(labels, offsets)
    pa, pb = _links(labels, offsets, sizes, min_overlap)
    n = sizes.size
    graph = coo_matrix((np.ones(pa.size, np.int8), (pa, pb)), shape=(n, n))
    comp = connected_components(graph, directed=False)[1]
    present = sizes > 0
    n_slices = np.bincount(comp[present], minlength=int(comp.max()) + 1)
    node_id = np.where(present & (n_slices[comp] >= min_slices), comp + 1, 0).astype(np.uint32)
    out = np.empty(labels.shape, dtype=np.uint32)
    for z in range(labels.shape[0]):
        out[z] = node_id[offsets[z] : offsets[z + 1]][labels[z]]
    logger.debug("linked %d 2-D objects over %d slices by %d links",
                 int(present.sum()), labels.shape[0], pa.size)
    return raster_relabel(out, 0, np.uint32)
