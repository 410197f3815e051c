"""Semantic overlap: a confusion matrix reduced from per-block bincounts, and Dice/IoU per class."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed

from sxtdask._tree import tree_reduce
from sxtdask.errors import ConfigError, option
from sxtdask.metrics._reduce import align, block_tasks

__all__ = ["MAX_CLASSES", "block_confusion", "class_scores", "combine_confusion", "confusion_matrix",
           "dice_from_counts", "dice_iou", "dice_score"]

MAX_CLASSES = 256


def _classes(block: np.ndarray, binarise: bool, what: str, max_classes: int) -> np.ndarray:
    """A block as non-negative class indices (``> 0`` when ``binarise``), checked against ``max_classes``."""
    if binarise:
        return (block > 0).astype(np.uint8)
    if block.size and block.dtype.kind == "i" and block.min() < 0:
        raise ConfigError(f"{what} labels must be non-negative; found {block.min()}")
    if block.size and int(block.max()) >= max_classes:
        raise ConfigError(
            f"{what} holds the value {int(block.max())}, beyond the {max_classes} classes a semantic "
            f"label image may have; evaluate it as instances "
            f"({option('instances=[NAME]', '--instances NAME')})")
    return block


def block_confusion(
    pred: np.ndarray, gt: np.ndarray, binarise_pred: bool = False, binarise_gt: bool = False,
    max_classes: int = MAX_CLASSES, ignore_label: int | None = None,
) -> np.ndarray:
    """The confusion matrix of one block: ``out[t, p]`` voxels of true class t predicted as p.

    Parameters
    ----------
    pred, gt : (z, y, x) integer ndarray
        The same block of the prediction and the ground truth.
    binarise_pred, binarise_gt : bool
        Compare ``label > 0`` instead of the label values (instance images as masks).
    max_classes : int
        Values must be below this; a larger one raises ConfigError.
    ignore_label : int, optional
        Voxels whose true value is this are left out (unannotated voxels of a sparse annotation).

    Returns
    -------
    (n, n) ndarray of int64
        ``n`` is one more than the largest class in the block (at least 1).
    """
    if ignore_label is not None:
        keep = gt != ignore_label
        pred, gt = pred[keep], gt[keep]
    p = _classes(pred, binarise_pred, "predicted", max_classes)
    t = _classes(gt, binarise_gt, "ground-truth", max_classes)
    n = 1 + max(int(p.max()) if p.size else 0, int(t.max()) if t.size else 0)
    flat = t.ravel().astype(np.intp) * n + p.ravel()
    return np.bincount(flat, minlength=n * n).astype(np.int64).reshape(n, n)


def combine_confusion(*matrices: np.ndarray) -> np.ndarray:
    """Sum confusion matrices of different sizes (each padded with zeros to the largest)."""
    n = max(m.shape[0] for m in matrices)
    out = np.zeros((n, n), dtype=np.int64)
    for m in matrices:
        out[: m.shape[0], : m.shape[1]] += m
    return out


def confusion_matrix(
    pred: Any, gt: Any, *, binarise_pred: bool = False, binarise_gt: bool = False,
    max_classes: int = MAX_CLASSES, ignore_label: int | None = None,
) -> Delayed:
    """The confusion matrix of two label volumes, chunk by chunk (lazy).

    Each block gives a ``np.bincount`` of ``truth * n + prediction``; the blocks' matrices are
    summed in a tree reduction (fan-in 8), so no task holds more than one block of each volume.

    Parameters
    ----------
    pred, gt : (Z, Y, X) dask.array.Array or ndarray of int
        Predicted and true class labels (0 background). The prediction is rechunked like ``gt``.
    binarise_pred, binarise_gt : bool
        Compare ``label > 0`` (e.g. an instance image against a semantic mask).
    max_classes : int
        Class values must be below this (ConfigError at compute time otherwise).
    ignore_label : int, optional
        True value of voxels left out of every count (e.g. 2 = unannotated in NCXT's sparse
        labels); its row of the matrix is then all zeros.

    Returns
    -------
    dask.delayed.Delayed
        Computes to an (n, n) int64 ndarray, rows the true class, columns the predicted class,
        ``n`` one more than the largest class present in either volume.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.zeros((2, 2, 2), np.uint8); t[0] = 1
    >>> confusion_matrix(np.ones_like(t), t).compute().tolist()
    [[0, 4], [0, 4]]
    """
    pred, gt = align(pred, gt)
    token = tokenize(pred, gt, binarise_pred, binarise_gt, max_classes, ignore_label)
    parts = block_tasks(block_confusion, (pred, gt), f"sxtdask-evaluate-confusion-{token}",
                        binarise_pred, binarise_gt, max_classes, ignore_label)
    return tree_reduce(parts, combine_confusion, f"sxtdask-evaluate-confusion-sum-{token}")


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def dice_from_counts(intersection: float, total: float, empty: Any = 1.0) -> Any:
    """The Dice coefficient ``2 |A ∩ B| / (|A| + |B|)`` from voxel counts.

    The one Dice formula of the package: :func:`dice_score`, :func:`class_scores` and the training
    validation Dice all use it.

    Parameters
    ----------
    intersection : number
        Voxels in both masks.
    total : number
        Voxels in the first mask plus voxels in the second.
    empty : object
        The result when ``total`` is 0 (both masks empty): 1.0 by default, ``None`` where an
        absent class has no score.

    Returns
    -------
    float, or ``empty``

    Examples
    --------
    >>> dice_from_counts(3, 8)
    0.75
    >>> dice_from_counts(0, 0), dice_from_counts(0, 0, empty=None)
    (1.0, None)
    """
    return float(2 * intersection / total) if total else empty


def dice_score(truth: Any, pred: Any) -> float:
    """The Dice coefficient of two boolean masks held in memory.

    Parameters
    ----------
    truth, pred : array_like of bool
        Masks of the same shape (NumPy arrays or anything ``np.asarray`` takes; non-zero is true).

    Returns
    -------
    float
        ``2 |truth ∩ pred| / (|truth| + |pred|)``; 1.0 when both masks are empty.

    Examples
    --------
    >>> import numpy as np
    >>> dice_score(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool))
    0.6666666666666666
    >>> dice_score(np.zeros(3, bool), np.zeros(3, bool))
    1.0
    """
    t = np.asarray(truth, dtype=bool)
    p = np.asarray(pred, dtype=bool)
    if t.shape != p.shape:
        raise ValueError(f"masks differ in shape: {t.shape} and {p.shape}")
    total = int(np.count_nonzero(t)) + int(np.count_nonzero(p))
    return dice_from_counts(int(np.count_nonzero(t & p)), total)


def class_scores(confusion: np.ndarray, classes: Iterable[int]) -> dict[str, Any]:
    """Dice and IoU of a set of classes taken as one (e.g. cytoplasm and nucleus as "cell").

    Parameters
    ----------
    confusion : (n, n) ndarray
        Rows the true class, columns the predicted class.
    classes : iterable of int
        Class values merged into one foreground; values ``>= n`` count as absent.

    Returns
    -------
    dict
        ``dice``, ``iou`` (None when the class is absent from both volumes), ``true_voxels``,
        ``pred_voxels`` and ``overlap_voxels``.
    """
    n = confusion.shape[0]
    idx = np.array([c for c in classes if 0 <= c < n], dtype=np.intp)
    tp = int(confusion[np.ix_(idx, idx)].sum())
    truth = int(confusion[idx, :].sum())
    pred = int(confusion[:, idx].sum())
    return {"dice": dice_from_counts(tp, truth + pred, empty=None), "iou": _ratio(tp, truth + pred - tp),
            "true_voxels": truth, "pred_voxels": pred, "overlap_voxels": tp}


def dice_iou(confusion: np.ndarray, *, include_background: bool = False) -> dict[int, dict[str, Any]]:
    """Dice and IoU per class from a confusion matrix.

    Parameters
    ----------
    confusion : (n, n) ndarray
        From :func:`confusion_matrix` (rows truth, columns prediction).
    include_background : bool
        Also score class 0.

    Returns
    -------
    dict of int to dict
        Per class value, :func:`class_scores` of that class alone.
    """
    first = 0 if include_background else 1
    return {c: class_scores(confusion, [c]) for c in range(first, confusion.shape[0])}
