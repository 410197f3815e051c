"""One segmenter's outputs under other names (``segment --name``), so methods can sit side by side."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..stats import IntensityStats
from ._base import OutputSpec, Segmenter, SegmenterInfo
from ._names import Method, Task

__all__ = ["RenamedSegmenter", "check_label_name", "rename_outputs"]

#: A label image name: what OME-Zarr keys and file systems take without quoting.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_label_name(name: str) -> str:
    """``name`` if it can name a label image (``labels/<name>``), else a ConfigError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(".sxtdask-new"):
        raise ConfigError(f"label image name {name!r} must be 1-100 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return name


@dataclass(frozen=True)
class RenamedSegmenter(Segmenter):
    """``inner`` with its outputs written as other label images: ``names`` maps each output's
    own name (``isg``) to the one written (``isg-classical``). Everything else is ``inner``'s.
    """

    inner: Segmenter
    names: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        own = [o.name for o in self.inner.outputs]
        mapping = dict(self.names)
        unknown = sorted(set(mapping) - set(own))
        if unknown:
            raise ConfigError(f"{type(self.inner).__name__} has no output {', '.join(unknown)} to rename "
                              f"(its outputs: {', '.join(own)})")
        for new in mapping.values():
            check_label_name(new)
        final = [mapping.get(n, n) for n in own]
        if len(set(final)) != len(final):
            raise ConfigError(f"renaming {own} to {final} gives two outputs one name")

    @property
    def _map(self) -> dict[str, str]:
        return dict(self.names)

    # ---- what the engine reads: inner's, with the new names

    @property
    def task(self) -> Task:  # type: ignore[override]
        return self.inner.task

    @property
    def method(self) -> Method | None:  # type: ignore[override]
        return self.inner.method

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:  # type: ignore[override]
        m = self._map
        return tuple(dataclasses.replace(o, name=m.get(o.name, o.name)) for o in self.inner.outputs)

    @property
    def halo(self) -> tuple[int, int, int]:  # type: ignore[override]
        return self.inner.halo

    @property
    def full_plane(self) -> bool:  # type: ignore[override]
        return self.inner.full_plane

    @property
    def device(self) -> str | None:  # type: ignore[override]
        return self.inner.device

    @property
    def context_radius(self) -> tuple[int, int, int] | None:  # type: ignore[override]
        return self.inner.context_radius

    @property
    def threshold_field(self) -> str | None:  # type: ignore[override]
        return self.inner.threshold_field

    @property
    def model_files(self) -> tuple[str, ...]:
        return self.inner.model_files

    @property
    def needs_gpu(self) -> bool:
        return self.inner.needs_gpu

    @property
    def blocks_need_gpu(self) -> bool:
        return self.inner.blocks_need_gpu

    @property
    def max_batch(self) -> int:
        return self.inner.max_batch

    def describe(self) -> SegmenterInfo:
        return dataclasses.replace(self.inner.describe(), outputs=self.outputs)

    def stitch_margin(self, halo: tuple[int, ...]) -> tuple[int, ...]:
        return self.inner.stitch_margin(halo)

    def memory_bytes(self, block_shape: tuple[int, ...]) -> int:
        return self.inner.memory_bytes(block_shape)

    def with_batch_size(self, batch_size: int) -> RenamedSegmenter:
        inner = self.inner.with_batch_size(batch_size)
        return self if inner is self.inner else dataclasses.replace(self, inner=inner)

    def with_threshold(self, threshold: float | None) -> RenamedSegmenter:
        inner = self.inner.with_threshold(threshold)
        return self if inner is self.inner else dataclasses.replace(self, inner=inner)

    def load_model(self, path: Any = None) -> RenamedSegmenter:
        self.inner.load_model(path)
        return self

    def segment_block(
        self, block: np.ndarray, stats: IntensityStats, voxel_size_nm: tuple[float, float, float]
    ) -> dict[str, np.ndarray]:
        m = self._map
        return {m.get(k, k): v for k, v in self.inner.segment_block(block, stats, voxel_size_nm).items()}

    def plan_context(self, image: Any, stats: Any, *, binned: Any = None) -> Any:
        return self.inner.plan_context(image, stats, binned=binned)

    def segment_block_in(self, block: np.ndarray, stats: IntensityStats,
                         voxel_size_nm: tuple[float, float, float], *, box: tuple[slice, ...],
                         shape: tuple[int, ...], context: Any,
                         core: tuple[slice, ...] | None = None) -> dict[str, np.ndarray]:
        m = self._map
        out = self.inner.segment_block_in(block, stats, voxel_size_nm, box=box, shape=shape,
                                          context=context, core=core)
        return {m.get(k, k): v for k, v in out.items()}


def rename_outputs(segmenter: Segmenter, names: dict[str, str]) -> Segmenter:
    """``segmenter`` writing its outputs under ``names`` (output name → label image name), part by
    part for a combination; ``segmenter`` itself when nothing changes.

    Raises
    ------
    ConfigError
        A name is not an output of the segmenter, is not a valid label image name, or two
        outputs would get one name.
    """
    from ._combined import CombinedSegmenter

    names = {k: v for k, v in names.items() if k != v}
    if not names:
        return segmenter
    own = {o.name for o in segmenter.outputs}
    unknown = sorted(set(names) - own)
    if unknown:
        raise ConfigError(f"no output {', '.join(unknown)} to rename (outputs: {', '.join(sorted(own))})")
    final = [names.get(o.name, o.name) for o in segmenter.outputs]
    if len(set(final)) != len(final):
        raise ConfigError(f"renaming {[o.name for o in segmenter.outputs]} to {final} gives two outputs "
                          "one name")
    parts = []
    for part in segmenter.parts:
        mine = tuple((k, v) for k, v in names.items() if k in {o.name for o in part.outputs})
        parts.append(RenamedSegmenter(part, mine) if mine else part)
    return parts[0] if len(parts) == 1 else CombinedSegmenter(tuple(parts))
