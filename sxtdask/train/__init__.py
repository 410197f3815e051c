"""Training: labelled tomograms read lazily, U-Net and Mask R-CNN trainers, COCO export.

- :func:`open_training_data`, :func:`split_by_tomogram`: OME-Zarr stores with ``labels/`` or
  image/label file pairs, split into training and validation by tomogram.
- :func:`train_unet` (:class:`UNetTrainConfig`): the cell/nucleus, mito and ISG U-Nets.
- :func:`train_cascade` (:class:`CascadeTrainConfig`): NCXT's two-stage 3-D cascade for the cell
  task; :func:`train_unet3d` (:class:`UNet3DTrainConfig`): a Biomedisa 3-D U-Net for it. Both
  learn from sparse labels (:func:`class_target`: a label map and an ignore label).
- :func:`train_maskrcnn` (:class:`MaskRCNNTrainConfig`): the ISG Mask R-CNN, on COCO-style
  patches; :func:`export_coco` writes those patches and their COCO JSON for other tools.
"""

from __future__ import annotations

from ._cascade3d import CascadeTrainConfig, train_cascade
from ._coco import check_patching, export_coco
from ._common import Progress, TrainResult, check_out
from ._data import (
    IGNORE,
    LabelMap,
    PatchSampler,
    TrainingVolume,
    class_target,
    ignore_label_of,
    open_training_data,
    parse_label_map,
    source_key,
    split_by_tomogram,
    target_from_labels,
)
from ._maskrcnn import MaskRCNNTrainConfig, train_maskrcnn
from ._train3d import check_run_out
from ._unet import UNetTrainConfig, train_unet
from ._unet3d import UNet3DTrainConfig, train_unet3d

__all__ = [
    "IGNORE",
    "CascadeTrainConfig",
    "LabelMap",
    "MaskRCNNTrainConfig",
    "PatchSampler",
    "Progress",
    "TrainResult",
    "TrainingVolume",
    "UNet3DTrainConfig",
    "UNetTrainConfig",
    "check_out",
    "check_patching",
    "check_run_out",
    "class_target",
    "export_coco",
    "ignore_label_of",
    "open_training_data",
    "parse_label_map",
    "source_key",
    "split_by_tomogram",
    "target_from_labels",
    "train_cascade",
    "train_maskrcnn",
    "train_unet",
    "train_unet3d",
]
