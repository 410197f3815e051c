"""Small helpers shared by the chunked metrics: per-block delayed tasks and a tree reduction."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed

from sxtdask.errors import ConfigError, InputError

__all__ = ["align", "as_dask", "block_tasks", "check_integer_labels", "tree_reduce"]

logger = logging.getLogger(__name__)

FAN_IN = 8


def as_dask(array: Any) -> da.Array:
    """Wrap a numpy (or any array-like) array as a Dask array; leave Dask arrays alone."""
    return array if isinstance(array, da.Array) else da.asarray(array)


def check_integer_labels(name: str, array: da.Array) -> None:
    """Raise ConfigError unless ``array`` is a 3-D integer (or boolean) label array."""
    if array.ndim != 3:
        raise ConfigError(f"{name} must be 3-D (z, y, x); got shape {array.shape}")
    if array.dtype.kind not in "biu":
        raise ConfigError(f"{name} must have an integer dtype; got {array.dtype}")


def block_tasks(
    func: Callable[..., Any], arrays: Sequence[da.Array], name: str, *extra: Any,
) -> list[Delayed]:
    """One delayed ``func(block_0, block_1, ..., *extra)`` per block, blocks in raster order.

    The arrays must share their chunks. Keys are ``(name, i, j, k)`` so the dashboard names them.
    """
    blocks = [a.to_delayed() for a in arrays]
    task = dask.delayed(func, pure=True)
    return [task(*(b[index] for b in blocks), *extra, dask_key_name=(name, *index))
            for index in np.ndindex(*blocks[0].shape)]


def tree_reduce(
    parts: list[Delayed], combine: Callable[..., Any], name: str, fan_in: int = FAN_IN,
) -> Delayed:
    """Combine ``parts`` in a tree of ``combine(*parts)`` tasks with at most ``fan_in`` inputs each.

    ``combine`` must be associative and accept one or more parts; no task sees more than ``fan_in``
    partial results, so the graph stays linear in the number of blocks.
    """
    task = dask.delayed(combine, pure=True)
    if len(parts) == 1:
        return task(parts[0], dask_key_name=(name, 0, 0))
    level = 0
    while len(parts) > 1:
        parts = [task(*parts[start:start + fan_in], dask_key_name=(name, level, j))
                 for j, start in enumerate(range(0, len(parts), fan_in))]
        level += 1
    logger.debug("%s: %d reduction level(s) with fan-in %d", name, level, fan_in)
    return parts[0]


def align(pred: Any, gt: Any) -> tuple[da.Array, da.Array]:
    """Both arrays as Dask arrays with the ground truth's chunks; InputError if the shapes differ."""
    pred, gt = as_dask(pred), as_dask(gt)
    check_integer_labels("prediction", pred)
    check_integer_labels("ground truth", gt)
    if pred.shape != gt.shape:
        raise InputError(f"prediction shape {pred.shape} differs from the ground truth shape {gt.shape}")
    if pred.chunks != gt.chunks:
        logger.debug("rechunking the prediction from %s to the ground truth's %s", pred.chunksize, gt.chunksize)
        pred = pred.rechunk(gt.chunks)
    return pred, gt
