"""``create_segmenter``: one entry point for every task, as in the reference API."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..stats import IntensityStats
from ._base import OutputKind, OutputSpec, Segmenter, Task
from ._classical import ClassicalISG, split_granules
from ._maskrcnn import MaskRCNNISG
from ._unet import UNetSegmenter

__all__ = ["CombinedSegmenter", "UNetISGInstances", "create_segmenter"]


@dataclass(frozen=True)
class UNetISGInstances(Segmenter):
    """ISG instances by the U-Net route: granule probability → the seeded watershed split."""

    unet: UNetSegmenter = dataclasses.field(default_factory=lambda: UNetSegmenter(task=Task.ISG))
    min_distance: int = 3
    min_voxels: int = 24
    max_voxels: int = 800
    halo: tuple[int, int, int] = (12, 0, 0)

    task = Task.ISG_INSTANCES
    outputs = (OutputSpec("isg", OutputKind.INSTANCES, "uint32"),)
    full_plane = True

    def load_model(self, path: Any = None) -> UNetISGInstances:
        return dataclasses.replace(self, unet=self.unet.load_model(path))

    @property
    def model(self) -> Any:
        return self.unet.model

    def segment_block(
        self, block: np.ndarray, stats: IntensityStats, voxel_size_nm: tuple[float, float, float]
    ) -> dict[str, np.ndarray]:
        prob = self.unet.probabilities(block, stats)[:, 1]
        labels = split_granules(prob > self.unet.threshold, prob, voxel_size_nm,
                                min_distance=self.min_distance, min_voxels=self.min_voxels,
                                max_voxels=self.max_voxels)
        return {"isg": labels}


_TASKS = ("cell", "mito", "isg", "isg_instances", "isg_maskrcnn", "isg_classical")


def create_segmenter(modality: str = "sxt", task: str = "cell", **options: Any) -> Segmenter:
    """A segmenter for ``task``: ``cell``, ``mito``, ``isg`` (U-Nets), ``isg_instances`` (U-Net
    probability + watershed), ``isg_maskrcnn`` (tiled Mask R-CNN linked across slices) or
    ``isg_classical`` (no model).

    ``options`` go to the segmenter (``device``, ``batch_size``, ``threshold``, ...). Call
    ``.load_model(path)`` on the result before ``.predict(volume)`` for the network tasks.

    Examples
    --------
    >>> seg = create_segmenter("sxt", task="isg_classical")
    >>> seg.task.value
    'isg-instances'
    """
    if modality != "sxt":
        raise ConfigError(f"modality {modality!r} is not supported (only 'sxt')")
    if task == "isg_classical":
        return ClassicalISG(**options)
    if task == "isg_maskrcnn":
        return MaskRCNNISG(**options)
    if task == "isg_instances":
        unet_opts = {k: options.pop(k) for k in ("device", "batch_size", "threshold", "model_path")
                     if k in options}
        return UNetISGInstances(unet=UNetSegmenter(task=Task.ISG, **unet_opts), **options)
    if task in ("cell", "mito", "isg"):
        return UNetSegmenter(task=Task(task), **options)
    raise ConfigError(f"task {task!r} is not one of {', '.join(_TASKS)}")


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

    @property
    def halo(self) -> tuple[int, int, int]:  # type: ignore[override]
        return tuple(max(h) for h in zip(*(p.halo for p in self.parts)))  # type: ignore[return-value]

    @property
    def full_plane(self) -> bool:  # type: ignore[override]
        return any(p.full_plane for p in self.parts)

    def segment_block(
        self, block: np.ndarray, stats: IntensityStats, voxel_size_nm: tuple[float, float, float]
    ) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for part in self.parts:
            out.update(part.segment_block(block, stats, voxel_size_nm))
        return out
