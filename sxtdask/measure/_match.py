"""Instance matching at an IoU threshold (precision, recall, F1) of two in-memory label images.

A thin wrapper: the matching itself is :func:`sxtdask.metrics.match_contingency` on the
contingency table of the whole volume taken as one block, so the in-memory and the chunked
scores are one implementation and always agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sxtdask.metrics import MatchResult, block_contingency, match_contingency

__all__ = ["MatchResult", "match_instances"]


def match_instances(truth: Any, pred: Any, iou_threshold: float = 0.5) -> MatchResult:
    """Match instances whose IoU exceeds ``iou_threshold`` (≥ 0.5 makes matches one-to-one).

    Parameters
    ----------
    truth, pred : (Z, Y, X) integer ndarray
        Instance labels, 0 = background (IDs need not correspond).
    iou_threshold : float
        At least 0.5.

    Returns
    -------
    MatchResult
        True positives, false positives and false negatives; ``precision``, ``recall``, ``f1``.

    Raises
    ------
    ValueError
        The shapes differ, or ``iou_threshold`` is below 0.5 (:class:`~sxtdask.errors.ConfigError`,
        also for negative labels).

    Examples
    --------
    >>> import numpy as np
    >>> t = np.zeros((1, 4, 4), np.uint8); t[0, :2] = 1
    >>> match_instances(t, t).f1
    1.0
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"shapes differ: {truth.shape} vs {pred.shape}")
    if iou_threshold < 0.5:  # before any work; match_contingency says the same
        raise ValueError(f"iou_threshold ({iou_threshold}) must be at least 0.5 for a 1:1 matching")
    return match_contingency(block_contingency(pred, truth), iou_threshold)
