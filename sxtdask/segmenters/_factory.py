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

__all__ = ["UNetISGInstances", "create_segmenter"]


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
