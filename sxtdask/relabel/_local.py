"""Per-block work: renumber a block's labels and cut the crops its neighbours are matched on.

A block's segmenter labels its extended box (core + halo). Labels that own voxels of the core are
renumbered ``1..n_core`` in the raster order of their first core voxel; labels seen only in the halo
get ``n_core + 1..n_total``. Halo-only pieces own no voxels, but they take part in the union-find:
they carry connections around block edges and corners, so face neighbours alone suffice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._grid import BlockGrid, Index

__all__ = [
    "BlockMeta",
    "BlockResult",
    "SparseCore",
    "provisional_dtype",
    "relabel_core",
    "renumber_block",
]


@dataclass(frozen=True)
class BlockMeta:
    """What the global reduction needs from one block (small: one entry per label piece).

    Attributes
    ----------
    n_core : int
        Labels that own core voxels (IDs ``1..n_core``).
    n_total : int
        ``n_core`` plus the labels seen only in the halo.
    first_index : (n_core,) int64 ndarray
        Global raster (C-order) index of each core label's first voxel.
    """

    n_core: int
    n_total: int
    first_index: np.ndarray


@dataclass(frozen=True)
class SparseCore:
    """Provisional core labels stored as (flat index, ID) of the foreground voxels only."""

    shape: tuple[int, ...]
    index: np.ndarray
    ids: np.ndarray

    def relabel(self, lut: np.ndarray) -> np.ndarray:
        out = np.zeros(self.shape, dtype=lut.dtype)
        out.ravel()[self.index] = lut[self.ids]
        return out


@dataclass(frozen=True)
class BlockResult:
    """A renumbered block: its meta, its provisional core labels and its face crops.

    ``core`` is a dense array of provisional IDs, a :class:`SparseCore` (cheaper where little of
    the block is foreground), or None.
    """

    meta: BlockMeta
    core: np.ndarray | SparseCore | None
    crops: dict[int, np.ndarray]


def relabel_core(core: np.ndarray | SparseCore, lut: np.ndarray) -> np.ndarray:
    """Apply a block's lookup slice (local core ID → final ID) to its provisional core labels."""
    if isinstance(core, SparseCore):
        return core.relabel(lut)
    return lut[core]


def provisional_dtype(n: int) -> np.dtype:
    """Smallest unsigned dtype that holds local IDs ``0..n``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _dense_lookup(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ``raw`` labels onto ``0..k`` (0 stays 0); return (compact block, compact → raw values)."""
    if raw.size and int(raw.max()) < 4 * raw.size + 1024 and raw.min() >= 0:
        present = np.zeros(int(raw.max()) + 1, dtype=bool)
        present[raw.ravel()] = True
        present[0] = True
        values = np.flatnonzero(present)
        to_compact = np.zeros(present.size, dtype=np.int64)
        to_compact[values] = np.arange(values.size)
        return to_compact[raw], values
    values, inverse = np.unique(raw, return_inverse=True)
    if values.size == 0 or values[0] != 0:
        values = np.concatenate([[0], values])
        inverse = inverse + 1
    return inverse.reshape(raw.shape), values




def _core_order(core: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels in ``core`` ordered by first voxel, those voxels' flat indices, and the foreground.

    Returns ``(labels, first_flat, fg_index, fg_values)``.
    """
    flat = core.ravel()
    fg = np.flatnonzero(flat)
    values = flat[fg]
    labels, first = np.unique(values, return_index=True)  # sorts the foreground only
    order = np.argsort(first, kind="stable")
    return labels[order], fg[first[order]], fg, values


def renumber_block(
    raw_ext: np.ndarray,
    grid: BlockGrid,
    idx: Index,
    *,
    n_raw: int | None = None,
    core_as: str = "dense",
) -> BlockResult:
    """Renumber a segmenter's labels on one extended block.

    Parameters
    ----------
    raw_ext : ndarray of int, shape of ``grid.ext(idx)``
        The segmenter's labels on the extended block; 0 is background, other values arbitrary.
    grid, idx
        Where the block lies.
    n_raw : int, optional
        Pass the label count when ``raw_ext`` already holds exactly ``0..n_raw`` (as
        ``scipy.ndimage.label`` returns): the compaction pass is skipped.
    core_as : {"dense", "sparse", "auto", "none"}
        How to return the provisional core labels; ``"auto"`` is sparse when at most a quarter
        of the core is foreground.

    Returns
    -------
    BlockResult
        Provisional core labels (IDs ``1..n_core``), the meta, and crops of the renumbered
        extended block on the boxes shared with the backward and forward face neighbours.
    """
    raw_ext = np.asarray(raw_ext)
    if n_raw is None:
        compact, raw_values = _dense_lookup(raw_ext)
    else:
        compact, raw_values = raw_ext, np.arange(n_raw + 1)
    core_compact = compact[grid.core_in_ext(idx)]
    order, first_flat, fg, fg_values = _core_order(core_compact)
    n_core = order.size
    new_id = np.zeros(raw_values.size, dtype=np.int64)
    new_id[order] = np.arange(1, n_core + 1)
    halo_only = np.flatnonzero(new_id == 0)[1:]
    new_id[halo_only] = np.arange(n_core + 1, n_core + 1 + halo_only.size)
    lookup = new_id.astype(provisional_dtype(n_core + halo_only.size))
    meta = BlockMeta(n_core, n_core + halo_only.size,
                     _global_flat(first_flat, core_compact.shape, grid, idx))
    if core_as == "auto":
        core_as = "sparse" if 4 * fg.size <= core_compact.size else "dense"
    core: np.ndarray | SparseCore | None = None
    if core_as == "sparse":
        core = SparseCore(core_compact.shape, fg, lookup[fg_values])
    elif core_as == "dense":
        core = lookup[core_compact]
    return BlockResult(meta, core, _face_crops(compact, lookup, grid, idx))


def _global_flat(
    first_flat: np.ndarray, core_shape: tuple[int, ...], grid: BlockGrid, idx: Index
) -> np.ndarray:
    """Flat indices in the core → flat raster indices in the whole array (int64)."""
    if first_flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    coords = np.unravel_index(first_flat, core_shape)
    origin = [s.start for s in grid.core(idx)]
    shifted = tuple(c.astype(np.int64) + o for c, o in zip(coords, origin, strict=False))
    return np.ravel_multi_index(shifted, grid.shape).astype(np.int64)


def _face_crops(
    compact: np.ndarray, lookup: np.ndarray, grid: BlockGrid, idx: Index
) -> dict[int, np.ndarray]:
    """Crops keyed by ``+(axis + 1)`` (forward neighbour) and ``-(axis + 1)`` (backward)."""
    crops: dict[int, np.ndarray] = {}
    for axis in range(grid.ndim):
        for step in (1, -1):
            j = idx[axis] + step
            if not 0 <= j < grid.numblocks[axis]:
                continue
            other = idx[:axis] + (j,) + idx[axis + 1 :]
            box = grid.shared(idx, other)
            if any(s.stop <= s.start for s in box):
                continue
            crops[step * (axis + 1)] = lookup[compact[grid.crop_in_ext(idx, box)]]
    return crops


