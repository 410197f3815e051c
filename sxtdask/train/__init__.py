"""Training: labelled tomograms read lazily, U-Net and Mask R-CNN trainers, COCO export.

- :func:`open_training_data`, :func:`split_by_tomogram`: OME-Zarr stores with ``labels/`` or
  image/label file pairs, split into training and validation by tomogram.
- :func:`train_unet` (:class:`UNetTrainConfig`): the cell/nucleus, mito and ISG U-Nets.
"""

from __future__ import annotations

from ._common import TrainResult
from ._data import (
    PatchSampler,
    TrainingVolume,
    open_training_data,
    split_by_tomogram,
    target_from_labels,
)
from ._unet import UNetTrainConfig, train_unet

__all__ = [
    "PatchSampler",
    "TrainResult",
    "TrainingVolume",
    "UNetTrainConfig",
    "open_training_data",
    "split_by_tomogram",
    "target_from_labels",
    "train_unet",
]
