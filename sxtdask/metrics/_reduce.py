"""Small helpers shared by the chunked metrics: aligned inputs and per-block delayed tasks.

The blocks' partial results are combined with :func:`sxtdask._tree.tree_reduce`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed

from sxtdask.errors import ConfigError, InputError

__all__ = ["align", "as_dask", "block_tasks", "check_integer_labels"]

logger = logging.getLogger(__name__)

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


def align(pred: Any, gt: Any) -> tuple[da.Array, da.Array]:
    """Both arrays as Dask arrays with the ground truth's chunks; InputError if the shapes differ."""
    pred, gt = as_dask(pred), as_dask(gt)
    check_integer_labels("prediction", pred)
    check_integer_labels("ground truth", gt)
    if pred.shape != gt.shape:
        raise InputError(f"prediction shape {pred.shape} differs from the ground truth shape {gt.shape}")
    if pred.chunks != gt.chunks:
        logger.debug("rechunking the prediction from %s to the ground truth's %s", pred.chunksize,
                     gt.chunksize)
        pred = pred.rechunk(gt.chunks)
    return pred, gt
