"""The fan-in tree reduction of per-block partial results that every chunked computation shares.

Per-block tasks (instance statistics, confusion matrices, contingency tables) each give a small
partial result; :func:`tree_reduce` merges them level by level, at most ``fan_in`` at a time, so
no task sees more than ``fan_in`` partials and the graph stays linear in the number of blocks.
Bottom layer: depends only on Dask, and any package may import it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import dask
from dask.delayed import Delayed

__all__ = ["FAN_IN", "tree_reduce"]

logger = logging.getLogger(__name__)

#: Default number of partials one combine task merges.
FAN_IN = 8


def tree_reduce(
    parts: Sequence[Delayed], combine: Callable[..., Any], name: str, fan_in: int = FAN_IN,
) -> Delayed:
    """Combine ``parts`` in a tree of ``combine(*parts)`` tasks with at most ``fan_in`` inputs each.

    Parameters
    ----------
    parts : sequence of dask.delayed.Delayed
        The per-block partial results (at least one), e.g. in raster order of blocks.
    combine : callable
        ``combine(*partials) -> partial``; associative, and accepting one or more partials.
    name : str
        Key prefix of the combine tasks: their keys are ``(name, level, j)``, so the dashboard and
        ``dask.utils.key_split`` show ``name`` (without a trailing token of hex digits).
    fan_in : int
        The most partials one task combines (at least 2).

    Returns
    -------
    dask.delayed.Delayed
        The fully combined result. There is always at least one combine task, so the result has a
        readable key even for a single part.

    Examples
    --------
    >>> import dask
    >>> parts = [dask.delayed(i, name=f"part-{i}") for i in range(20)]
    >>> total = tree_reduce(parts, lambda *xs: sum(xs), "sxtdask-example-sum", fan_in=4)
    >>> total.compute(), total.key
    (190, ('sxtdask-example-sum', 2, 0))
    """
    if not parts:
        raise ValueError(f"{name}: nothing to reduce")
    if fan_in < 2:
        raise ValueError(f"{name}: fan_in must be at least 2, got {fan_in}")
    task = dask.delayed(combine, pure=True)
    level_parts = list(parts)
    if len(level_parts) == 1:
        return task(level_parts[0], dask_key_name=(name, 0, 0))
    level = 0
    while len(level_parts) > 1:
        level_parts = [task(*level_parts[start:start + fan_in], dask_key_name=(name, level, j))
                       for j, start in enumerate(range(0, len(level_parts), fan_in))]
        level += 1
    logger.debug("%s: %d reduction level(s) of %d part(s), fan-in %d", name, level, len(parts), fan_in)
    return level_parts[0]
