"""Edges between the label pieces of two neighbouring blocks, from the box their halos share.

Both blocks labelled the shared box, so each voxel there carries one ID from either side. Two
matching rules turn those co-located pairs into edges of the union-find:

``Match.TOUCHING``
    Every co-located pair of foreground IDs is an edge. Right for connected components, where a
    block's pieces are subsets of true components and any shared voxel proves they are one.
``Match.MUTUAL_BEST``
    A pair is an edge only if each is the other's largest overlap. Right for instance labels:
    one instance crossing the face overlaps itself on both sides, while two instances that touch
    across the face stay apart even where the blocks disagree on their boundary by a few voxels.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Match", "face_edges", "touching_pairs", "mutual_best_pairs"]


class Match(enum.Enum):
    """How the pieces of two blocks are matched on their shared halo box."""

    TOUCHING = "touching"
    MUTUAL_BEST = "mutual-best"


def _pair_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct co-located foreground pairs ``(a_id, b_id)`` and how many voxels each covers."""
    both = (a != 0) & (b != 0)
    pa = a[both].astype(np.uint64)
    pb = b[both].astype(np.uint64)
    keys, counts = np.unique((pa << np.uint64(32)) | pb, return_counts=True)
    return (keys >> np.uint64(32)).astype(np.int64), (keys & np.uint64(0xFFFFFFFF)).astype(
        np.int64
    ), counts


def touching_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct co-located pair of foreground IDs in two label crops of one box."""
    la, lb, _ = _pair_counts(a, b)
    return la, lb


def best_pairs(keys: np.ndarray, partners: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Boolean mask of pairs that are the best (largest count, then smallest partner) for their key."""
    order = np.lexsort((partners, -counts, keys))
    first = np.ones(order.size, dtype=bool)
    first[1:] = keys[order][1:] != keys[order][:-1]
    best = np.zeros(order.size, dtype=bool)
    best[order[first]] = True
    return best


def mutual_best_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of IDs that are each other's largest overlap in two label crops of one box.

    Overlaps are counted against background too: a piece that mostly lies on the other side's
    background is matched to nothing.
    """
    la, lb, counts = _pair_counts(a, b)
    if la.size == 0:
        return la, lb
    bg_a = np.bincount(a[(a != 0) & (b == 0)].astype(np.int64), minlength=int(la.max()) + 1)
    bg_b = np.bincount(b[(b != 0) & (a == 0)].astype(np.int64), minlength=int(lb.max()) + 1)
    keep = (counts > bg_a[la]) | (counts > bg_b[lb])
    mutual = best_pairs(la, lb, counts) & best_pairs(lb, la, counts) & keep
    return la[mutual], lb[mutual]


def face_edges(a: np.ndarray, b: np.ndarray, match: Match) -> tuple[np.ndarray, np.ndarray]:
    """Edges between two blocks' pieces on their shared box, by the given rule."""
    if a.shape != b.shape:
        raise ValueError(f"shared-box crops differ in shape: {a.shape} vs {b.shape}")
    if match is Match.TOUCHING:
        return touching_pairs(a, b)
    return mutual_best_pairs(a, b)
