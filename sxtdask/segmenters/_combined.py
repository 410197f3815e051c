"""Several segmenters over one read of each chunk."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..stats import IntensityStats
from ._base import BlockContext, OutputSpec, Segmenter
from ._names import Task

__all__ = ["CombinedSegmenter"]


@dataclass(frozen=True)
class CombinedSegmenter(Segmenter):
    """Several segmenters over one read of each chunk (their output names must differ).

    The halo is the largest of theirs; each sees the same extended block.
    """

    parts: tuple[Segmenter, ...] = ()

    def __post_init__(self) -> None:
        names = [o.name for p in self.parts for o in p.outputs]
        if not self.parts or len(names) != len(set(names)):
            raise ConfigError(f"combined segmenters need distinct outputs, got {names}")

    @property
    def task(self) -> Task:  # type: ignore[override]
        return self.parts[0].task

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:  # type: ignore[override]
        return tuple(o for p in self.parts for o in p.outputs)

    def memory_bytes(self, block_shape: tuple[int, ...]) -> int:
        """The largest part's peak (they run one after the other) plus every part's outputs."""
        outputs = sum(np.dtype(o.dtype).itemsize for o in self.outputs) * int(np.prod(block_shape))
        return max(p.memory_bytes(block_shape) for p in self.parts) + outputs

    @property
    def max_batch(self) -> int:
        return max(p.max_batch for p in self.parts)

    def with_batch_size(self, batch_size: int) -> CombinedSegmenter:
        parts = tuple(p.with_batch_size(batch_size) for p in self.parts)
        same = all(a is b for a, b in zip(parts, self.parts, strict=True))
        return self if same else dataclasses.replace(self, parts=parts)

    @property
    def halo(self) -> tuple[int, int, int]:  # type: ignore[override]
        return tuple(max(h) for h in zip(*(p.halo for p in self.parts), strict=True))

    @property
    def full_plane(self) -> bool:  # type: ignore[override]
        return any(p.full_plane for p in self.parts)

    @property
    def context_radius(self) -> tuple[int, int, int] | None:  # type: ignore[override]
        radii = [p.context_radius for p in self.parts]
        if any(r is None for r in radii):
            known = [r for r in radii if r is not None]
            return None if not known else tuple(max(v) for v in zip(*known, strict=True))
        return tuple(max(v) for v in zip(*radii, strict=True))

    @property
    def model_files(self) -> tuple[str, ...]:
        return tuple(f for p in self.parts for f in p.model_files)

    @property
    def needs_gpu(self) -> bool:
        return any(p.needs_gpu for p in self.parts)

    @property
    def blocks_need_gpu(self) -> bool:
        return any(p.blocks_need_gpu for p in self.parts)

    @property
    def device(self) -> str | None:  # type: ignore[override]
        devices = {p.device for p in self.parts} - {None}
        return devices.pop() if len(devices) == 1 else None if not devices else "mixed"

    def load_model(self, path: Any = None) -> CombinedSegmenter:
        """Load the default model, in place, of every part that has none yet (parts given a
        checkpoint keep it; a combination takes no single path).
        """
        if path is not None:
            raise ConfigError("a combined segmenter takes one checkpoint per part: load each part")
        for part in self.parts:
            if not part.model_files:
                part.load_model()
        return self

    def with_threshold(self, threshold: float | None) -> CombinedSegmenter:
        if threshold is None:
            return self
        return CombinedSegmenter(tuple(p.with_threshold(threshold) for p in self.parts))

    def segment_block(
        self, block: np.ndarray, stats: IntensityStats, voxel_size_nm: tuple[float, float, float]
    ) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for part in self.parts:
            out.update(part.segment_block(block, stats, voxel_size_nm))
        return out

    def plan_context(self, image: Any, stats: Any, *,
                     binned: Any = None) -> BlockContext | None:
        """The parts' per-tomogram work, each block getting every part's piece."""
        contexts = tuple(p.plan_context(image, stats, binned=binned) for p in self.parts)
        return None if all(c is None for c in contexts) else _PartsContext(contexts)

    def segment_block_in(self, block: np.ndarray, stats: IntensityStats,
                         voxel_size_nm: tuple[float, float, float], *, box: tuple[slice, ...],
                         shape: tuple[int, ...], context: Any,
                         core: tuple[slice, ...] | None = None) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for part, piece in zip(self.parts, context, strict=True):
            out.update(part.segment_block_in(block, stats, voxel_size_nm, box=box, shape=shape,
                                             context=piece, core=core))
        return out


@dataclass(frozen=True)
class _PartsContext(BlockContext):
    """A combination's per-tomogram work: one piece per part (None for parts without)."""

    contexts: tuple[BlockContext | None, ...]

    def for_block(self, box: tuple[slice, ...]) -> Any:
        from dask import delayed

        return delayed(tuple, pure=True)(
            [None if c is None else c.for_block(box) for c in self.contexts])
