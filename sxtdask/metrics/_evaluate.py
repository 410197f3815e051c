"""Evaluation of predicted label images against ground truth: per label image, and per store pair."""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed

from sxtdask.errors import ConfigError, InputError
from sxtdask.metrics._coco import coco_metrics
from sxtdask.metrics._instances import (
    Contingency,
    average_precision,
    contingency_table,
    match_contingency,
)
from sxtdask.metrics._morph import morphometrics
from sxtdask.metrics._reduce import align
from sxtdask.metrics._semantic import (
    class_scores,
    confusion_matrix,
    dice_from_counts,
    dice_iou,
)

__all__ = ["LabelKind", "LabelPair", "evaluate_labels", "evaluate_stores", "resolve_labels"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

class LabelKind(enum.Enum):
    """How a label image is evaluated."""

    CELL = "cell"            # 0/1/2: Dice/IoU of cell, cytoplasm, nucleus + morphometrics
    SEMANTIC = "semantic"    # classes: Dice/IoU per class
    INSTANCES = "instances"  # instances: matching, 3-D AP, 2-D COCO


@dataclass(frozen=True)
class LabelPair:
    """A predicted label image, the true one it is compared with, and how.

    ``binarise_pred`` / ``binarise_gt`` compare ``label > 0`` of that side (an instance image
    against a semantic mask, e.g. ``isg-mask=isg``).
    """

    pred: str
    gt: str
    kind: LabelKind
    binarise_pred: bool = False
    binarise_gt: bool = False

    @property
    def name(self) -> str:
        """``NAME``, or ``PRED=GT`` when the names differ."""
        return self.pred if self.pred == self.gt else f"{self.pred}={self.gt}"


def _is_instance_dtype(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize >= 4


def _parse(spec: str) -> tuple[str, str]:
    pred, sep, gt = spec.partition("=")
    pred, gt = pred.strip(), (gt.strip() if sep else pred.strip())
    if not pred or not gt:
        raise ConfigError(f"--labels {spec!r} must be NAME or PRED=GT")
    return pred, gt


def _kind(pred: str, gt: str, dtypes: tuple[np.dtype, np.dtype], instances: Sequence[str]) -> LabelPair:
    if gt == "cell" or pred == "cell":
        return LabelPair(pred, gt, LabelKind.CELL)
    wide = tuple(_is_instance_dtype(d) for d in dtypes)
    if pred in instances or gt in instances or pred == gt == "isg" or all(wide):
        return LabelPair(pred, gt, LabelKind.INSTANCES)
    return LabelPair(pred, gt, LabelKind.SEMANTIC, binarise_pred=wide[0], binarise_gt=wide[1])


def resolve_labels(
    pred: PathLike, gt: PathLike, labels: Sequence[str] | None = None, *,
    instances: Sequence[str] = (),
) -> list[LabelPair]:
    """Which label images to compare, and how.

    Parameters
    ----------
    pred, gt : str or Path
        OME-Zarr images with ``labels/<name>``.
    labels : sequence of str, optional
        ``NAME`` (the same name in both) or ``PRED=GT``; default every name present in both.
    instances : sequence of str
        Names (of either side) to evaluate as instances whatever their dtype. Otherwise ``cell``
        is a cell image (0/1/2), ``isg`` against ``isg`` and any two 32/64-bit integer images are
        instances, and anything else is semantic (a 32/64-bit side against a narrower one is
        binarised, e.g. ``isg-mask=isg``).

    Raises
    ------
    InputError
        A named label image is missing, or the stores have no name in common.
    """
    from sxtdask.io import list_labels, open_labels

    pred_names, gt_names = list_labels(pred), list_labels(gt)
    if labels is None:
        pairs = [(n, n) for n in gt_names if n in pred_names]
        if not pairs:
            raise InputError(
                f"{pred} and {gt} have no label image name in common (prediction: "
                f"{', '.join(pred_names) or 'none'}; ground truth: {', '.join(gt_names) or 'none'}); "
                f"pass --labels PRED=GT")
    else:
        pairs = [_parse(s) for s in labels]
    out = []
    for p, g in pairs:
        for path, name, names in ((pred, p, pred_names), (gt, g, gt_names)):
            if name not in names:
                raise InputError(f"{path}: no label image {name!r}; available: {', '.join(names) or 'none'}")
        dtypes = (open_labels(pred, p).dtype, open_labels(gt, g).dtype)
        out.append(_kind(p, g, dtypes, instances))
    return out


# --------------------------------------------------------------------------- one label image


def _cell_result(cm: np.ndarray, cell: dict[str, Any], nucleus: dict[str, Any]) -> dict[str, Any]:
    """Cell (any value > 0), cytoplasm (1) and nucleus (2) scores, with the morphometrics."""
    classes = {"cell": class_scores(cm, range(1, cm.shape[0])), "cytoplasm": class_scores(cm, [1]),
               "nucleus": class_scores(cm, [2])}
    return {"kind": LabelKind.CELL.value, "classes": classes,
            "morphometrics": {"cell": cell, "nucleus": nucleus}}


def _semantic_result(cm: np.ndarray) -> dict[str, Any]:
    classes = {str(c): s for c, s in dice_iou(cm).items()}
    dice = [s["dice"] for s in classes.values() if s["dice"] is not None]
    return {"kind": LabelKind.SEMANTIC.value, "classes": classes,
            "mean_dice": float(np.mean(dice)) if dice else None}


def _instance_result(table: Contingency, coco: dict[str, Any] | None) -> dict[str, Any]:
    m = match_contingency(table, 0.5)
    iou = table.pair_iou()
    matched = iou[iou > 0.5]
    overlap = int(table.pair_voxels.sum())
    truth, pred = int(table.gt_sizes.sum()), int(table.pred_sizes.sum())
    return {
        "kind": LabelKind.INSTANCES.value,
        "gt_instances": int(table.gt_ids.size), "pred_instances": int(table.pred_ids.size),
        "match_50": {"tp": m.tp, "fp": m.fp, "fn": m.fn, "precision": m.precision, "recall": m.recall,
                     "f1": m.f1, "mean_matched_iou": float(matched.mean()) if matched.size else None},
        "ap_3d": average_precision(table),
        "foreground": {"dice": dice_from_counts(overlap, truth + pred, empty=None),
                       "iou": overlap / (truth + pred - overlap) if truth + pred else None},
        "coco_2d": coco,
    }


def evaluate_labels(
    pred: Any, gt: Any, kind: LabelKind | str, *, spacing_nm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    binarise_pred: bool = False, binarise_gt: bool = False, coco: bool = True,
    scores: Mapping[int, float] | None = None,
) -> Delayed:
    """Evaluate one predicted label volume against its ground truth (lazy).

    Parameters
    ----------
    pred, gt : (Z, Y, X) dask.array.Array or ndarray of int
        Same shape; the prediction is rechunked like ``gt``. Nothing is ever loaded whole.
    kind : LabelKind or str
        ``cell``: Dice/IoU of cell (> 0), cytoplasm (1) and nucleus (2), and morphometrics of cell
        and nucleus. ``semantic``: Dice/IoU per class. ``instances``: matching at IoU 0.5
        (precision, recall, F1), 3-D AP over IoU 0.5:0.95, foreground Dice/IoU and 2-D COCO.
    spacing_nm : tuple of 3 float, nanometres
        Voxel size, for volumes (µm³) and surfaces (µm²).
    binarise_pred, binarise_gt : bool
        Semantic only: compare ``label > 0`` of that side.
    coco : bool
        Instances only: also compute the slice-wise COCO metrics (``coco_2d`` is None otherwise).
    scores : mapping of int to float, optional
        Instances only: per predicted instance scores for COCO (default 1.0).

    Returns
    -------
    dask.delayed.Delayed
        Computes to a JSON-able dict whose ``kind`` names the evaluation.
    """
    try:
        kind = LabelKind(kind)
    except ValueError:
        raise ConfigError(f"kind {kind!r} must be one of {', '.join(k.value for k in LabelKind)}") from None
    pred, gt = align(pred, gt)
    token = tokenize(pred, gt, kind, spacing_nm, coco, binarise_pred, binarise_gt,
                     None if scores is None else sorted(scores.items()))
    name = f"sxtdask-evaluate-{kind.value}-{token}"
    if kind is LabelKind.INSTANCES:
        table = contingency_table(pred, gt)
        c = coco_metrics(pred, gt, scores=scores) if coco else None
        return dask.delayed(_instance_result, pure=True)(table, c, dask_key_name=name)
    cm = confusion_matrix(pred, gt, binarise_pred=binarise_pred, binarise_gt=binarise_gt)
    if kind is LabelKind.SEMANTIC:
        return dask.delayed(_semantic_result, pure=True)(cm, dask_key_name=name)
    cell = morphometrics(pred > 0, gt > 0, spacing_nm)
    nucleus = morphometrics(pred == 2, gt == 2, spacing_nm)
    return dask.delayed(_cell_result, pure=True)(cm, cell, nucleus, dask_key_name=name)


# --------------------------------------------------------------------------- two stores


def _open_pair(pred: PathLike, gt: PathLike, pair: LabelPair) -> tuple[Any, Any]:
    from sxtdask.io import open_labels

    p, g = open_labels(pred, pair.pred), open_labels(gt, pair.gt)
    if p.shape != g.shape:
        raise InputError(f"shapes differ: {pred} labels/{pair.pred} is {p.shape}, "
                         f"{gt} labels/{pair.gt} is {g.shape}")
    return p, g


def evaluate_stores(
    pred: PathLike, gt: PathLike, labels: Sequence[str] | None = None, *, instances: Sequence[str] = (),
    coco: bool = True, scores: Mapping[str, Mapping[int, float]] | None = None, compute: bool = True,
) -> dict[str, Any] | Delayed:
    """Evaluate the label images of a predicted OME-Zarr store against a ground-truth store.

    Parameters
    ----------
    pred, gt : str or Path
        OME-Zarr images (``sxtdask segment`` output, ``sxtdask synth`` ground truth ``*.gt.zarr``).
    labels : sequence of str, optional
        ``NAME`` or ``PRED=GT`` (e.g. ``isg-mask=isg``); default the names present in both.
    instances : sequence of str
        Label names to evaluate as instances whatever their dtype (see :func:`resolve_labels`).
    coco : bool
        Compute the 2-D slice-wise COCO metrics of instance images.
    scores : mapping of str to (mapping of int to float), optional
        Per prediction label name, the scores of its instances for COCO (default 1.0).
    compute : bool
        Compute now (with the active Dask scheduler or client) and return the dict; False returns
        the lazy :class:`~dask.delayed.Delayed`.

    Returns
    -------
    dict or Delayed
        ``{"prediction", "ground_truth", "voxel_size_nm", "labels": {name: result}}``; each result is
        :func:`evaluate_labels`' dict. The voxel size is the ground truth's.

    Raises
    ------
    InputError
        A store or a label image is missing, or two label images' shapes differ.
    """
    from sxtdask.io import open_image

    pred_img, gt_img = open_image(pred), open_image(gt)
    pairs = resolve_labels(pred, gt, labels, instances=instances)
    arrays = {pair.name: _open_pair(pred, gt, pair) for pair in pairs}
    spacing = gt_img.voxel_size_nm
    if not np.allclose(pred_img.voxel_size_nm, spacing):
        logger.warning("voxel sizes differ: %s %s nm, %s %s nm; using the ground truth's",
                       pred, pred_img.voxel_size_nm, gt, spacing)
    results = {
        pair.name: evaluate_labels(
            *arrays[pair.name], pair.kind, spacing_nm=spacing, binarise_pred=pair.binarise_pred,
            binarise_gt=pair.binarise_gt, coco=coco, scores=(scores or {}).get(pair.pred))
        for pair in pairs
    }
    graph = dask.delayed(_report, pure=True)(str(Path(pred)), str(Path(gt)), list(spacing), results,
                                              dask_key_name=f"sxtdask-evaluate-report-{tokenize(results)}")
    return graph.compute() if compute else graph


def _report(pred: str, gt: str, spacing: list[float], results: dict[str, Any]) -> dict[str, Any]:
    return {"prediction": pred, "ground_truth": gt, "voxel_size_nm": spacing, "labels": results}
