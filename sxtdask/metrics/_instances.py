"""Instance scores from a chunked sparse contingency table: matching, P/R/F1 and 3-D AP.

The contingency table of two instance images lists, for every pair of a true instance ``g`` and a
predicted instance ``p`` that overlap, the number of voxels they share, plus every instance's size.
Each block gives its own table (pair counts of the voxels where both are non-zero, and label
sizes); tables add, so a tree reduction over the blocks gives the whole volume's table, and every
IoU follows as ``inter / (size_g + size_p - inter)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed

from sxtdask._tree import tree_reduce
from sxtdask.errors import ConfigError
from sxtdask.metrics._reduce import align, block_tasks

__all__ = ["IOU_THRESHOLDS", "Contingency", "InstanceOutcomes", "MatchResult", "average_precision",
           "block_contingency", "combine_contingency", "contingency_table", "instance_outcomes",
           "match_contingency"]

IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())


@dataclass(frozen=True)
class MatchResult:
    """Counts and scores of a one-to-one matching of predicted to true instances.

    Also :class:`sxtdask.measure.MatchResult` (what :func:`sxtdask.measure.match_instances` returns).
    """

    tp: int
    fp: int
    fn: int
    iou_threshold: float

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 1.0


@dataclass(frozen=True, eq=False)
class Contingency:
    """The sparse contingency table of a true and a predicted instance image.

    Attributes
    ----------
    gt_ids, gt_sizes : (m,) ndarray of int64
        True instance labels (ascending, 0 excluded) and their sizes in voxels.
    pred_ids, pred_sizes : (k,) ndarray of int64
        Predicted instance labels (ascending, 0 excluded) and their sizes in voxels.
    pair_gt, pair_pred, pair_voxels : (q,) ndarray of int64
        Each overlapping (true, predicted) pair and the voxels it shares, sorted by pair.
    """

    gt_ids: np.ndarray
    gt_sizes: np.ndarray
    pred_ids: np.ndarray
    pred_sizes: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    pair_voxels: np.ndarray

    def pair_iou(self) -> np.ndarray:
        """IoU of every overlapping pair, in the order of ``pair_gt``."""
        size_g = self.gt_sizes[np.searchsorted(self.gt_ids, self.pair_gt)]
        size_p = self.pred_sizes[np.searchsorted(self.pred_ids, self.pair_pred)]
        return self.pair_voxels / (size_g + size_p - self.pair_voxels)


def _group_sum(keys: np.ndarray, counts: np.ndarray,
               axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys (ascending) and the sum of ``counts`` per key (rows of ``keys`` when axis=1)."""
    if keys.shape[-1] == 0:
        return keys.astype(np.int64), np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(keys, axis=axis, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=counts, minlength=unique.shape[-1])
    return unique.astype(np.int64), np.rint(sums).astype(np.int64)


def _ids(block: np.ndarray, what: str) -> np.ndarray:
    values = block.ravel()
    if values.size and values.dtype.kind == "i" and values.min() < 0:
        raise ConfigError(f"{what} instance labels must be non-negative; found {values.min()}")
    if values.dtype.kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
        raise ConfigError(f"{what} instance label {values.max()} does not fit in int64")
    return values.astype(np.int64)


def _pair_counts(g: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (true, predicted) pairs where both are non-zero, as a (2, q) array, and their counts."""
    both = (g > 0) & (p > 0)
    g, p = g[both], p[both]
    if g.size and (g.max() >= 2**31 or p.max() >= 2**32):  # too wide for one int64 key
        return np.unique(np.stack([g, p]), axis=1, return_counts=True)
    keys, counts = np.unique((g << 32) | p, return_counts=True)
    return np.stack([keys >> 32, keys & 0xFFFFFFFF]), counts


def block_contingency(pred: np.ndarray, gt: np.ndarray) -> Contingency:
    """The contingency table of one block (see :class:`Contingency`)."""
    p, g = _ids(pred, "predicted"), _ids(gt, "ground-truth")
    gt_ids, gt_sizes = np.unique(g[g > 0], return_counts=True)
    pred_ids, pred_sizes = np.unique(p[p > 0], return_counts=True)
    pairs, inter = _pair_counts(g, p)
    return Contingency(gt_ids.astype(np.int64), gt_sizes.astype(np.int64), pred_ids.astype(np.int64),
                       pred_sizes.astype(np.int64), pairs[0].astype(np.int64),
                       pairs[1].astype(np.int64), inter.astype(np.int64))


def combine_contingency(*tables: Contingency) -> Contingency:
    """Add contingency tables of disjoint parts of a volume (instances may span several parts)."""
    if len(tables) == 1:
        return tables[0]

    def cat(field: str) -> np.ndarray:
        return np.concatenate([getattr(t, field) for t in tables])

    gt_ids, gt_sizes = _group_sum(cat("gt_ids"), cat("gt_sizes"))
    pred_ids, pred_sizes = _group_sum(cat("pred_ids"), cat("pred_sizes"))
    pairs, inter = _group_sum(np.stack([cat("pair_gt"), cat("pair_pred")]), cat("pair_voxels"), axis=1)
    return Contingency(gt_ids, gt_sizes, pred_ids, pred_sizes, pairs[0], pairs[1], inter)


def contingency_table(pred: Any, gt: Any) -> Delayed:
    """The sparse contingency table of two instance images, chunk by chunk (lazy).

    Parameters
    ----------
    pred, gt : (Z, Y, X) dask.array.Array or ndarray of int
        Predicted and true instance labels, 0 background; IDs need not correspond. The prediction
        is rechunked like ``gt``.

    Returns
    -------
    dask.delayed.Delayed
        Computes to a :class:`Contingency`. Its size grows with the number of instances and
        overlapping pairs, never with the number of voxels.
    """
    pred, gt = align(pred, gt)
    token = tokenize(pred, gt)
    parts = block_tasks(block_contingency, (pred, gt), f"sxtdask-evaluate-pairs-{token}")
    return tree_reduce(parts, combine_contingency, f"sxtdask-evaluate-pairs-sum-{token}")


def match_contingency(table: Contingency, iou_threshold: float = 0.5) -> MatchResult:
    """Match instances whose IoU is above ``iou_threshold`` (IoU > 0.5 makes every match
    one-to-one): the package's one instance matcher (:func:`sxtdask.measure.match_instances` is
    this on one in-memory block).

    Parameters
    ----------
    table : Contingency
    iou_threshold : float
        At least 0.5.

    Returns
    -------
    MatchResult
        True positives, false positives and false negatives; ``precision``, ``recall``, ``f1``.
    """
    if iou_threshold < 0.5:
        raise ConfigError(f"iou_threshold ({iou_threshold}) must be at least 0.5 for a 1:1 matching")
    tp = int(np.count_nonzero(table.pair_iou() > iou_threshold))
    return MatchResult(tp, table.pred_ids.size - tp, table.gt_ids.size - tp, iou_threshold)


def average_precision(
    table: Contingency, thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict[str, Any]:
    """3-D "average precision" without scores: ``TP / (TP + FP + FN)`` per IoU threshold, averaged.

    This is the instance-segmentation AP of the 2018 Data Science Bowl, StarDist and Cellpose
    (called "accuracy" by StarDist), not the area under a precision-recall curve: masks carry no
    scores to rank them. At each threshold ``t`` (>= 0.5) a true and a predicted instance match
    when their IoU is above ``t``. It is 1.0 when neither image holds an instance.

    Returns
    -------
    dict
        ``ap`` (the mean over thresholds), ``thresholds`` and ``ap_per_threshold`` (lists).
    """
    per = []
    for t in thresholds:
        m = match_contingency(table, float(t))
        den = m.tp + m.fp + m.fn
        per.append(m.tp / den if den else 1.0)
    return {"ap": float(np.mean(per)), "thresholds": [float(t) for t in thresholds],
            "ap_per_threshold": per}


@dataclass(frozen=True, eq=False)
class InstanceOutcomes:
    """Every true and predicted instance classified by the matching of :func:`match_contingency`.

    The classes part the matcher's counts: ``tp = len(matched_gt)``, ``fn = len(missed) +
    len(split_gt)``, ``fp = len(false) + len(split_pred)``.

    Attributes
    ----------
    matched_gt, matched_pred : (n,) ndarray of int64
        The matched pairs (IoU above the threshold): true positives.
    missed : ndarray of int64
        True instances neither matched nor split: false negatives.
    false : ndarray of int64
        Predicted instances neither matched nor a fragment of a split one: false positives.
    split_gt : ndarray of int64
        True instances not matched that hold two or more unmatched predicted instances, each with
        more than half of its voxels inside the true one.
    split_pred : ndarray of int64
        Those fragments (ascending).
    """

    matched_gt: np.ndarray
    matched_pred: np.ndarray
    missed: np.ndarray
    false: np.ndarray
    split_gt: np.ndarray
    split_pred: np.ndarray

    def masks(self, truth: Any, pred: Any) -> dict[str, np.ndarray]:
        """Boolean masks of each outcome on ``truth`` and ``pred`` (the same labels, any shape,
        e.g. one slice): ``matched``, ``false`` and ``split`` mark predicted voxels, ``missed``
        true ones.
        """
        t, p = np.asarray(truth), np.asarray(pred)
        return {"matched": np.isin(p, self.matched_pred), "missed": np.isin(t, self.missed),
                "false": np.isin(p, self.false), "split": np.isin(p, self.split_pred)}


def instance_outcomes(table: Contingency, iou_threshold: float = 0.5) -> InstanceOutcomes:
    """Classify each instance as matched, missed, false or split (see :class:`InstanceOutcomes`).

    Parameters
    ----------
    table : Contingency
        Of the whole volume (:func:`block_contingency` of two in-memory images, or
        :func:`contingency_table` computed), so that the classes are those of the 3-D matching.
    iou_threshold : float
        At least 0.5, as for :func:`match_contingency`.

    Examples
    --------
    >>> t = np.zeros((1, 4, 8), np.uint8); t[0, :, :4] = 1; t[0, :, 4:] = 2
    >>> p = np.zeros_like(t); p[0, :, :4] = 1; p[0, :2, 4:] = 2; p[0, 2:, 4:] = 3
    >>> o = instance_outcomes(block_contingency(p, t))
    >>> o.matched_gt.tolist(), o.split_gt.tolist(), o.split_pred.tolist()
    ([1], [2], [2, 3])
    """
    if iou_threshold < 0.5:
        raise ConfigError(f"iou_threshold ({iou_threshold}) must be at least 0.5 for a 1:1 matching")
    hit = table.pair_iou() > iou_threshold
    matched_gt, matched_pred = table.pair_gt[hit], table.pair_pred[hit]
    size_p = table.pred_sizes[np.searchsorted(table.pred_ids, table.pair_pred)]
    inside = 2 * table.pair_voxels > size_p  # more than half of the prediction: one true instance
    free = inside & ~np.isin(table.pair_gt, matched_gt) & ~np.isin(table.pair_pred, matched_pred)
    hosts, n = np.unique(table.pair_gt[free], return_counts=True)
    split_gt = hosts[n >= 2]
    split_pred = np.sort(table.pair_pred[free & np.isin(table.pair_gt, split_gt)])
    return InstanceOutcomes(
        matched_gt=matched_gt, matched_pred=matched_pred,
        missed=np.setdiff1d(table.gt_ids, np.concatenate([matched_gt, split_gt])),
        false=np.setdiff1d(table.pred_ids, np.concatenate([matched_pred, split_pred])),
        split_gt=split_gt, split_pred=split_pred)
