"""``label``: connected components of a Dask array, with ``scipy.ndimage.label``'s contract."""

from __future__ import annotations

import operator
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import ArrayLike
from scipy import ndimage

from ..errors import ConfigError
from ._edges import Match
from ._graph import reduction_tasks
from ._grid import BlockGrid, Index
from ._halo import Offset, assemble_ext, neighbour_offsets, shell_pieces
from ._local import BlockMeta, SparseCore, relabel_core, renumber_block

__all__ = ["label"]


def _check_structure(structure: ArrayLike | None, ndim: int) -> np.ndarray:
    if structure is None:
        return ndimage.generate_binary_structure(ndim, 1)
    s = np.asarray(structure, dtype=bool)
    if s.ndim != ndim or any(n != 3 for n in s.shape):
        raise ConfigError(
            f"structure must have shape {(3,) * ndim} for a {ndim}-d image, not {s.shape}"
        )
    if not np.array_equal(s, s[(slice(None, None, -1),) * ndim]):
        raise ConfigError("structure must be centrosymmetric")
    return s


def _neighbour_shells(
    shells: list[dict[Offset, np.ndarray]], grid: BlockGrid, idx: Index
) -> dict[Offset, dict[Offset, np.ndarray]]:
    return {off: sh for (off, _), sh in zip(neighbour_offsets(grid, idx), shells, strict=False)}


def _local_task(
    chunk: np.ndarray,
    shells: list[dict[Offset, np.ndarray]],
    grid: BlockGrid,
    idx: Index,
    structure: np.ndarray,
) -> tuple[BlockMeta, dict[int, np.ndarray], np.ndarray | SparseCore | None]:
    raw, n = ndimage.label(assemble_ext(grid, idx, chunk, _neighbour_shells(shells, grid, idx)), structure)
    res = renumber_block(raw, grid, idx, n_raw=n, core_as="auto")
    return res.meta, res.crops, res.core


def label(
    image: ArrayLike, structure: ArrayLike | None = None, *, dtype: Any = np.int32
) -> tuple[da.Array, da.Array]:
    """Label connected features of a Dask array, exactly like ``scipy.ndimage.label``.

    Every chunk is labelled on itself plus a one-voxel halo; pieces that share a voxel across a
    face are joined by a union-find over all chunks; objects are numbered ``1..n`` in the raster
    order of their first voxel. The result equals ``scipy.ndimage.label`` on the whole array
    (the same IDs, not only the same partition) for any chunking. The task graph grows linearly
    with the number of chunks, and each chunk is labelled once; its labels wait for the lookup
    table as (index, ID) pairs of the foreground where that is smaller than a dense block.

    Parameters
    ----------
    image : (Z, Y, X) or any-d array-like
        Non-zero voxels are features. A NumPy array is wrapped with its whole shape as one chunk.
    structure : array-like of bool, shape (3,) * ndim, optional
        Connectivity, as in ``scipy.ndimage.label`` (default: faces only).
    dtype : dtype
        Dtype of the labels (default int32, as scipy); too many objects raise
        ``sxtdask.errors.LabelOverflowError`` when computed.

    Returns
    -------
    labels : dask.array.Array of ``dtype``, chunked like ``image``
    n : 0-d dask.array.Array
        Number of objects.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.from_array(np.array([[1, 1, 0, 1], [0, 1, 0, 1]]), chunks=(1, 2))
    >>> labels, n = label(x)
    >>> labels.compute().tolist(), int(n.compute())
    ([[1, 1, 0, 2], [0, 1, 0, 2]], 2)
    """
    arr: da.Array = da.asarray(image)
    s = _check_structure(structure, arr.ndim)
    halo = tuple(1 if nb > 1 else 0 for nb in arr.numblocks)
    grid = BlockGrid(arr.shape, arr.chunks, halo)
    token = tokenize(arr, s, np.dtype(dtype).str)
    shell, local = f"sxtdask-label-shell-{token}", f"sxtdask-label-local-{token}"
    name = f"sxtdask-label-relabel-{token}"
    dsk, keys = reduction_tasks(
        grid, local, match=Match.TOUCHING, dtype=dtype, prefix="sxtdask-label", token=token
    )
    core = f"sxtdask-label-core-{token}"
    for i in grid.indices():
        near = [(shell, *n) for _, n in neighbour_offsets(grid, i)]
        dsk[(shell, *i)] = (shell_pieces, (arr.name, *i), grid, i)
        dsk[(local, *i)] = (_local_task, (arr.name, *i), near, grid, i, s)
        dsk[(core, *i)] = (operator.getitem, (local, *i), 2)
        dsk[(name, *i)] = (relabel_core, (core, *i), (keys.lookup, *i))
    # dask.array.Array does not match dask's own DaskCollection protocol (__dask_scheduler__ is a
    # staticmethod there, a function on Array), though it is a Dask collection
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[arr])  # type: ignore[list-item]
    labels = da.Array(graph, name, chunks=arr.chunks, dtype=dtype)
    # The count is a 0-d block in a layer of its own (as dask_image's is), so it can enter
    # further Dask expressions; the reduction's own count key holds a Python int.
    count = f"sxtdask-label-n-{token}"
    n_graph = HighLevelGraph.from_collections(
        count, {(count,): (_count_array, (keys.count,))}, dependencies=[labels])  # type: ignore[list-item]
    return labels, da.Array(n_graph, count, chunks=(), dtype=np.intp)


def _count_array(n: int) -> np.ndarray:
    return np.asarray(n, dtype=np.intp)
