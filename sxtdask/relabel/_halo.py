"""Halo exchange for in-memory Dask arrays in two tasks per block.

``dask.array.overlap`` builds a halo from up to 27 slicing tasks and a concatenation per block,
which swamps the scheduler for thousands of blocks. Here every block cuts, in one task, the thin
pieces its neighbours need (its *shell*); a block's extended array is assembled from its own
chunk and its neighbours' shells inside the task that consumes it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import product

import numpy as np

from ._grid import BlockGrid, Index

__all__ = ["Offset", "neighbour_offsets", "shell_pieces", "assemble_ext"]

Offset = tuple[int, ...]


def neighbour_offsets(grid: BlockGrid, idx: Index) -> Iterator[tuple[Offset, Index]]:
    """``(offset, neighbour)`` for every existing neighbour (diagonals included) within the halo."""
    steps = [(-1, 0, 1) if h > 0 else (0,) for h in grid.halo]
    for off in product(*steps):
        if not any(off):
            continue
        n = tuple(i + o for i, o in zip(idx, off, strict=False))
        if all(0 <= j < nb for j, nb in zip(n, grid.numblocks, strict=False)):
            yield off, n


def _box_in(box: tuple[slice, ...], frame: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(b.start - f.start, b.stop - f.start) for b, f in zip(box, frame, strict=False))


def _intersect(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=False))


def shell_pieces(chunk: np.ndarray, grid: BlockGrid, idx: Index) -> dict[Offset, np.ndarray]:
    """The parts of ``chunk`` that lie in each neighbour's extended box, keyed by offset."""
    core = grid.core(idx)
    return {
        off: chunk[_box_in(_intersect(core, grid.ext(n)), core)].copy()
        for off, n in neighbour_offsets(grid, idx)
    }


def assemble_ext(
    grid: BlockGrid,
    idx: Index,
    chunk: np.ndarray,
    shells: Mapping[Offset, Mapping[Offset, np.ndarray]],
) -> np.ndarray:
    """Block ``idx`` grown by its halo, from its own chunk and its neighbours' shells.

    ``shells[off]`` is the shell of the neighbour at ``idx + off``.
    """
    ext = grid.ext(idx)
    out = np.empty(tuple(s.stop - s.start for s in ext), dtype=chunk.dtype)
    out[grid.core_in_ext(idx)] = chunk
    for off, n in neighbour_offsets(grid, idx):
        piece = shells[off][tuple(-o for o in off)]
        out[_box_in(_intersect(grid.core(n), ext), ext)] = piece
    return out
