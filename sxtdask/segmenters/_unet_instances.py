"""ISG instances by the U-Net route: the granule probability, then the seeded watershed split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..stats import IntensityStats
from ._base import OutputKind, OutputSpec, Segmenter
from ._classical import split_granules
from ._names import Method, Task
from ._unet import UNetSegmenter

__all__ = ["UNetISGInstances"]


@dataclass(frozen=True)
class UNetISGInstances(Segmenter):
    """ISG instances by the U-Net route: granule probability → the seeded watershed split.

    Parameters
    ----------
    unet : UNetSegmenter
        The ISG U-Net (``task=Task.ISG``); its ``threshold`` (default 0.5) makes the mask.
    min_distance, min_voxels, max_voxels : int
        As :class:`~sxtdask.segmenters.ClassicalISG`'s watershed split and size filter.
    halo : (hz, hy, hx)
    """

    unet: UNetSegmenter = dataclasses.field(default_factory=lambda: UNetSegmenter(task=Task.ISG))
    min_distance: int = 3
    min_voxels: int = 24
    max_voxels: int = 800
    halo: tuple[int, int, int] = (12, 0, 0)

    task = Task.ISG_INSTANCES
    method = Method.UNET
    outputs = (OutputSpec("isg", OutputKind.INSTANCES, "uint32"),)
    full_plane = True

    @property
    def device(self) -> str:  # type: ignore[override]
        return self.unet.device

    @property
    def model_files(self) -> tuple[str, ...]:
        return self.unet.model_files

    def memory_bytes(self, block_shape: tuple[int, ...]) -> int:
        """The U-Net's peak, then the watershed's (the classical default)."""
        return max(self.unet.memory_bytes(block_shape), super().memory_bytes(block_shape))

    @property
    def max_batch(self) -> int:
        return self.unet.max_batch

    def with_batch_size(self, batch_size: int) -> UNetISGInstances:
        unet = self.unet.with_batch_size(batch_size)
        return self if unet is self.unet else dataclasses.replace(self, unet=unet)

    def load_model(self, path: Any = None) -> UNetISGInstances:
        """Load the ISG U-Net in place (default: the bundled weights) and return the segmenter."""
        self.unet.load_model(path)
        return self

    def with_threshold(self, threshold: float | None) -> UNetISGInstances:
        if threshold is None:
            return self
        return dataclasses.replace(self, unet=self.unet.with_threshold(threshold))

    @property
    def model(self) -> Any:
        return self.unet.model

    def segment_block(
        self, block: np.ndarray, stats: IntensityStats, voxel_size_nm: tuple[float, float, float]
    ) -> dict[str, np.ndarray]:
        prob = self.unet.stream(block, stats, lambda p: p[:, 1], np.float32)
        labels = split_granules(prob > self.unet.isg_threshold, prob, voxel_size_nm,
                                min_distance=self.min_distance, min_voxels=self.min_voxels,
                                max_voxels=self.max_voxels)
        return {"isg": labels}
