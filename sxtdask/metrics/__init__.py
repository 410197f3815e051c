"""Evaluation metrics of label volumes against ground truth, computed chunk by chunk.

Semantic images get Dice and IoU per class from a confusion matrix summed over blocks; instance
images get matching at IoU 0.5 (precision, recall, F1), 3-D average precision over IoU 0.5:0.95
and 2-D slice-wise COCO metrics (pycocotools) from a sparse contingency table and per-slab RLEs;
cell images also get morphometrics (volume, marching-cubes surface, surface-to-volume ratio).
Every function returns a lazy Dask object; no task holds more than a block (or a slab of whole
slices) of either volume. :func:`evaluate_stores` compares two OME-Zarr stores.
"""

from __future__ import annotations

from sxtdask.metrics._coco import (
    COCO_STATS,
    block_annotations,
    block_coco,
    coco_accumulate,
    coco_metrics,
    slice_rles,
)
from sxtdask.metrics._evaluate import (
    LabelKind,
    LabelPair,
    evaluate_labels,
    evaluate_stores,
    resolve_labels,
)
from sxtdask.metrics._instances import (
    IOU_THRESHOLDS,
    Contingency,
    InstanceOutcomes,
    MatchResult,
    average_precision,
    block_contingency,
    combine_contingency,
    contingency_table,
    instance_outcomes,
    match_contingency,
)
from sxtdask.metrics._morph import morphometrics, surface_area
from sxtdask.metrics._semantic import (
    class_scores,
    confusion_matrix,
    dice_from_counts,
    dice_iou,
    dice_score,
)

__all__ = [
    "COCO_STATS",
    "IOU_THRESHOLDS",
    "Contingency",
    "InstanceOutcomes",
    "LabelKind",
    "LabelPair",
    "MatchResult",
    "average_precision",
    "block_annotations",
    "block_coco",
    "block_contingency",
    "class_scores",
    "coco_accumulate",
    "coco_metrics",
    "combine_contingency",
    "confusion_matrix",
    "contingency_table",
    "dice_from_counts",
    "dice_iou",
    "dice_score",
    "evaluate_labels",
    "evaluate_stores",
    "instance_outcomes",
    "match_contingency",
    "morphometrics",
    "resolve_labels",
    "slice_rles",
    "surface_area",
]
