"""Training: labelled tomograms read lazily, U-Net and Mask R-CNN trainers, COCO export.

- :func:`open_training_data`, :func:`split_by_tomogram`: OME-Zarr stores with ``labels/`` or
  image/label file pairs, split into training and validation by tomogram.
- :func:`train_unet` (:class:`UNetTrainConfig`): the cell/nucleus, mito and ISG U-Nets.
- :func:`train_maskrcnn` (:class:`MaskRCNNTrainConfig`): the ISG Mask R-CNN, on COCO-style
  patches; :func:`export_coco` writes those patches and their COCO JSON for other tools.
"""

from __future__ import annotations

from ._coco import check_patching, export_coco
from ._common import TrainResult, check_out
from ._data import (
    PatchSampler,
    TrainingVolume,
    open_training_data,
    source_key,
    split_by_tomogram,
    target_from_labels,
)
from ._maskrcnn import MaskRCNNTrainConfig, train_maskrcnn
from ._unet import UNetTrainConfig, train_unet

__all__ = [
    "MaskRCNNTrainConfig",
    "PatchSampler",
    "TrainResult",
    "TrainingVolume",
    "UNetTrainConfig",
    "check_out",
    "check_patching",
    "export_coco",
    "open_training_data",
    "source_key",
    "split_by_tomogram",
    "target_from_labels",
    "train_maskrcnn",
    "train_unet",
]
