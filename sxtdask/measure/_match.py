"""Instance matching at an IoU threshold (precision, recall, F1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MatchResult", "match_instances"]


@dataclass(frozen=True)
class MatchResult:
    """Counts and scores of a one-to-one matching of predicted to true instances."""

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


def match_instances(truth: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> MatchResult:
    """Match instances whose IoU exceeds ``iou_threshold`` (≥ 0.5 makes matches one-to-one).

    Parameters
    ----------
    truth, pred : (Z, Y, X) integer ndarray
        Instance labels, 0 = background.
    """
    if truth.shape != pred.shape:
        raise ValueError(f"shapes differ: {truth.shape} vs {pred.shape}")
    if iou_threshold < 0.5:
        raise ValueError(f"iou_threshold ({iou_threshold}) must be at least 0.5 for a 1:1 matching")
    t = truth.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    both = (t > 0) & (p > 0)
    pairs, inter = np.unique(np.stack([t[both], p[both]]), axis=1, return_counts=True)
    size_t, size_p = np.bincount(t), np.bincount(p)
    iou = inter / (size_t[pairs[0]] + size_p[pairs[1]] - inter) if inter.size else inter
    tp = int(np.count_nonzero(iou > iou_threshold))
    n_t, n_p = int(np.count_nonzero(size_t[1:])), int(np.count_nonzero(size_p[1:]))
    return MatchResult(tp, n_p - tp, n_t - tp, iou_threshold)
