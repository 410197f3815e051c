"""Block geometry: the core and halo-extended boxes of every chunk, and face neighbours."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate

import numpy as np

from ..errors import ConfigError

__all__ = ["BlockGrid", "Index"]

Index = tuple[int, ...]


@dataclass(frozen=True)
class BlockGrid:
    """Chunk layout of an N-d array with a halo around every chunk.

    Parameters
    ----------
    shape : tuple of int
        Array shape, voxels.
    chunks : tuple of tuple of int
        Dask-style chunk sizes along every axis (uneven edge chunks allowed).
    halo : tuple of int
        Halo depth along every axis, voxels. The extended box of a chunk is its core grown by the
        halo and clipped to the array; neighbouring extended boxes overlap by up to ``2 * halo``.
    """

    shape: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    halo: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.chunks) != len(self.shape) or len(self.halo) != len(self.shape):
            raise ConfigError(
                f"chunks ({len(self.chunks)} axes) and halo ({len(self.halo)} axes) must match "
                f"the array's {len(self.shape)} axes"
            )
        for axis, (size, sizes) in enumerate(zip(self.shape, self.chunks, strict=True)):
            if sum(sizes) != size or any(c <= 0 for c in sizes):
                raise ConfigError(f"chunks {sizes} along axis {axis} do not tile its length {size}")
        if any(h < 0 for h in self.halo):
            raise ConfigError(f"halo {self.halo} must not be negative")

    @classmethod
    def regular(
        cls, shape: tuple[int, ...], chunk: tuple[int, ...], halo: tuple[int, ...]
    ) -> BlockGrid:
        """Grid of chunks of size ``chunk`` (the last chunk along an axis may be smaller)."""
        chunks = tuple(
            tuple(min(c, s - start) for start in range(0, s, c)) for s, c in zip(shape, chunk, strict=False)
        )
        return cls(tuple(shape), chunks, tuple(halo))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numblocks(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.chunks)

    @property
    def nblocks(self) -> int:
        return int(np.prod(self.numblocks))

    @cached_property
    def _all_starts(self) -> tuple[tuple[int, ...], ...]:
        return tuple((0, *accumulate(c)) for c in self.chunks)

    def _starts(self, axis: int) -> tuple[int, ...]:
        return self._all_starts[axis]

    def indices(self) -> Iterator[Index]:
        """Block indices in C order (the order of ``linear``)."""
        return iter(np.ndindex(*self.numblocks))

    def linear(self, idx: Index) -> int:
        return int(np.ravel_multi_index(idx, self.numblocks))

    def core(self, idx: Index) -> tuple[slice, ...]:
        """Global slices of the block's own voxels."""
        return tuple(slice(self._starts(a)[i], self._starts(a)[i + 1]) for a, i in enumerate(idx))

    def ext(self, idx: Index) -> tuple[slice, ...]:
        """Global slices of the block grown by the halo, clipped to the array."""
        return tuple(
            slice(max(s.start - h, 0), min(s.stop + h, n))
            for s, h, n in zip(self.core(idx), self.halo, self.shape, strict=False)
        )

    def core_in_ext(self, idx: Index) -> tuple[slice, ...]:
        """The core as slices into the extended block."""
        return tuple(
            slice(c.start - e.start, c.stop - e.start)
            for c, e in zip(self.core(idx), self.ext(idx), strict=False)
        )

    def forward_neighbours(self, idx: Index) -> Iterator[tuple[int, Index]]:
        """``(axis, neighbour index)`` for the next block along every axis, where one exists."""
        for axis in range(self.ndim):
            if idx[axis] + 1 < self.numblocks[axis]:
                yield axis, idx[:axis] + (idx[axis] + 1,) + idx[axis + 1 :]

    def shared(self, a: Index, b: Index) -> tuple[slice, ...]:
        """Global box that the extended blocks ``a`` and ``b`` have in common (may be empty)."""
        return tuple(
            slice(max(sa.start, sb.start), min(sa.stop, sb.stop))
            for sa, sb in zip(self.ext(a), self.ext(b), strict=False)
        )

    def crop_in_ext(self, idx: Index, box: tuple[slice, ...]) -> tuple[slice, ...]:
        """A global box as slices into block ``idx``'s extended block."""
        return tuple(
            slice(b.start - e.start, b.stop - e.start) for b, e in zip(box, self.ext(idx), strict=False)
        )
