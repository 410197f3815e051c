"""Per-block partial sums of instance statistics and their label-wise combination.

A *partial* is a dict of 1-D numpy arrays of equal length, one entry per label present,
sorted by label:

``label`` (int64), ``count`` (int64), ``sum_z``/``sum_y``/``sum_x`` (int64, sums of global voxel
indices), ``min_z``/``min_y``/``min_x`` and ``max_z``/``max_y``/``max_x`` (int64, inclusive global
index bounds) and ``sum_intensity`` (float64, zero when there is no image).

Partials are associative and commutative under :func:`combine_partials`, so they can be reduced in
any tree shape; every field except ``sum_intensity`` is combined exactly.
"""

from __future__ import annotations

import numpy as np

from sxtdask.errors import ConfigError, LabelOverflowError

__all__ = ["PARTIAL_FIELDS", "Partial", "block_partial", "combine_partials", "empty_partial"]

Partial = dict[str, np.ndarray]

_AXES = ("z", "y", "x")
_SUM_FIELDS = ("count", "sum_z", "sum_y", "sum_x", "sum_intensity")
_MIN_FIELDS = ("min_z", "min_y", "min_x")
_MAX_FIELDS = ("max_z", "max_y", "max_x")
PARTIAL_FIELDS: tuple[str, ...] = ("label", *_SUM_FIELDS, *_MIN_FIELDS, *_MAX_FIELDS)

_INT64_MAX = np.iinfo(np.int64).max


def empty_partial() -> Partial:
    """Return a partial with no labels (every field a length-0 array of its dtype)."""
    partial = {name: np.zeros(0, dtype=np.int64) for name in PARTIAL_FIELDS}
    partial["sum_intensity"] = np.zeros(0, dtype=np.float64)
    return partial


def _group(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort ``keys`` and find its runs of equal values.

    Returns
    -------
    order : (n,) ndarray of intp
        Permutation that sorts ``keys``.
    starts : (g,) ndarray of intp
        Start of each run of equal keys in ``keys[order]`` (for ``ufunc.reduceat``).
    unique : (g,) ndarray
        The distinct keys, ascending.
    """
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    is_start = np.empty(sorted_keys.size, dtype=bool)
    is_start[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    return order, starts, sorted_keys[starts]


def _check_label_values(values: np.ndarray, offset: tuple[int, int, int]) -> None:
    """Raise if a block's non-zero labels are negative or do not fit in int64."""
    if values.dtype.kind == "i" and values.min() < 0:
        raise ConfigError(
            f"labels must be non-negative; found {values.min()} in the block at voxel offset {offset}"
        )
    if values.dtype.kind == "u" and values.max() > _INT64_MAX:
        raise LabelOverflowError(
            f"label {values.max()} in the block at voxel offset {offset} does not fit in int64"
        )


def block_partial(
    labels: np.ndarray, image: np.ndarray | None, offset: tuple[int, int, int]
) -> Partial:
    """Compute the partial statistics of one block.

    Parameters
    ----------
    labels : (z, y, x) ndarray of int
        One block of the label volume; 0 is background.
    image : (z, y, x) ndarray or None
        The same block of the intensity volume (absorption), or None.
    offset : tuple of 3 int
        Global voxel index of the block's first voxel, (z, y, x).

    Returns
    -------
    Partial
        One entry per non-zero label present in the block, sorted by label; indices are global.
    """
    flat = np.flatnonzero(labels)
    if flat.size == 0:
        return empty_partial()
    values = np.ravel(labels)[flat]
    _check_label_values(values, offset)
    order, starts, keys = _group(values)
    flat = flat[order]
    count = np.diff(np.append(starts, flat.size)).astype(np.int64)
    partial: Partial = {"label": keys.astype(np.int64), "count": count}
    _, size_y, size_x = labels.shape
    strides = (size_y * size_x, size_x, 1)
    for axis, name in enumerate(_AXES):
        coord = (flat // strides[axis]) % labels.shape[axis]
        partial[f"sum_{name}"] = np.add.reduceat(coord, starts, dtype=np.int64) + count * offset[axis]
        partial[f"min_{name}"] = np.minimum.reduceat(coord, starts).astype(np.int64) + offset[axis]
        partial[f"max_{name}"] = np.maximum.reduceat(coord, starts).astype(np.int64) + offset[axis]
    if image is None:
        partial["sum_intensity"] = np.zeros(keys.size, dtype=np.float64)
    else:
        weights = np.ravel(image)[flat].astype(np.float64, copy=False)
        partial["sum_intensity"] = np.add.reduceat(weights, starts)
    return partial


def combine_partials(*partials: Partial) -> Partial:
    """Merge partials label by label (sums add, minima and maxima reduce).

    Parameters
    ----------
    *partials : Partial
        Partials of disjoint parts of the volume; an instance may appear in several.

    Returns
    -------
    Partial
        One entry per label present in any input, sorted by label.
    """
    parts = [p for p in partials if p["label"].size]
    if not parts:
        return empty_partial()
    if len(parts) == 1:
        return parts[0]
    joined = {name: np.concatenate([p[name] for p in parts]) for name in PARTIAL_FIELDS}
    order, starts, keys = _group(joined["label"])
    out: Partial = {"label": keys}
    for name in _SUM_FIELDS:
        out[name] = np.add.reduceat(joined[name][order], starts)
    for name in _MIN_FIELDS:
        out[name] = np.minimum.reduceat(joined[name][order], starts)
    for name in _MAX_FIELDS:
        out[name] = np.maximum.reduceat(joined[name][order], starts)
    return out
