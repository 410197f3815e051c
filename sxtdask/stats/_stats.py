"""Global intensity statistics: one reduction over all chunks before any per-chunk work.

Every chunk is normalised with the same numbers (DESIGN invariant 3), so there are no seams at chunk
faces and a chunked run equals a whole-volume run. One pass gives min, max, mean, standard deviation,
the count of non-finite voxels and percentiles (from a deterministic strided sample of every chunk,
at most ``sample_size`` voxels in all).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ..errors import InvalidVolumeError

__all__ = ["IntensityStats", "ConstantVolumeWarning", "global_stats"]

logger = logging.getLogger(__name__)


class ConstantVolumeWarning(UserWarning):
    """The volume has (nearly) one value: nothing to segment."""


@dataclass(frozen=True)
class IntensityStats:
    """Whole-volume intensity statistics.

    Attributes
    ----------
    min, max, mean, std : float
        Over all finite voxels.
    p_low, p_high : float
        The ``percentiles`` (default 0.5 and 99.5) of the intensities, from a strided sample.
    n_voxels : int
    n_nonfinite : int
        NaN or infinite voxels.
    noise : float
        The standard deviation of the voxel noise: 1.4826 × the median absolute difference of
        neighbours along x, over √2, from a strided sample of the pairs that differ (exact zeros,
        as of a masked background, are left out). Structure barely moves a median, so this is
        the noise of the flat parts of the volume; NaN where no pair differs.
    """

    min: float
    max: float
    mean: float
    std: float
    p_low: float
    p_high: float
    n_voxels: int
    n_nonfinite: int = 0
    percentiles: tuple[float, float] = (0.5, 99.5)
    noise: float = float("nan")

    @property
    def is_constant(self) -> bool:
        """True where the robust range is zero (a normalisation would divide by zero)."""
        return not self.p_high > self.p_low

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Map ``p_low → 0`` and ``p_high → 1`` (float32, not clipped); zeros for a constant volume."""
        if self.is_constant:
            return np.zeros(np.shape(x), dtype=np.float32)
        scale = np.float32(1.0 / (self.p_high - self.p_low))
        return (np.asarray(x, dtype=np.float32) - np.float32(self.p_low)) * scale


def _partial(block: np.ndarray, step: int) -> dict[str, Any]:
    x = np.asarray(block, dtype=np.float64)
    finite = np.isfinite(x)
    n_bad = int(x.size - np.count_nonzero(finite))
    good = x[finite] if n_bad else x.ravel()
    sample = x.ravel()[::step]
    diffs = np.abs(np.diff(x, axis=-1)).ravel()[::step] if x.shape[-1] > 1 else np.empty(0)
    diffs = diffs[np.isfinite(diffs) & (diffs > 0)].astype(np.float32)
    return {
        "diffs": diffs,
        "n": good.size,
        "bad": n_bad,
        "min": float(good.min()) if good.size else np.inf,
        "max": float(good.max()) if good.size else -np.inf,
        "sum": float(good.sum()),
        "sumsq": float(np.square(good).sum()),
        "sample": sample[np.isfinite(sample)].astype(np.float32),
    }


def _combine(parts: list[dict[str, Any]], percentiles: tuple[float, float]) -> IntensityStats:
    n = sum(p["n"] for p in parts)
    bad = sum(p["bad"] for p in parts)
    if n == 0:
        return IntensityStats(np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, 0, bad, percentiles)
    mean = sum(p["sum"] for p in parts) / n
    var = max(sum(p["sumsq"] for p in parts) / n - mean * mean, 0.0)
    lo, hi = np.percentile(np.concatenate([p["sample"] for p in parts]), percentiles)
    diffs = np.concatenate([p["diffs"] for p in parts])
    noise = float(np.median(diffs)) * 1.4826 / np.sqrt(2.0) if diffs.size else float("nan")
    return IntensityStats(
        min=min(p["min"] for p in parts),
        max=max(p["max"] for p in parts),
        mean=float(mean),
        std=float(np.sqrt(var)),
        p_low=float(lo),
        p_high=float(hi),
        n_voxels=n + bad,
        n_nonfinite=bad,
        percentiles=percentiles,
        noise=noise,
    )


def _coprime_step(step: int, shape: tuple[int, ...]) -> int:
    """The smallest stride ≥ ``step`` that shares no factor with the row length (no aliasing)."""
    if step <= 1:
        return 1
    row = int(shape[-1]) if shape else 1
    while np.gcd(step, row) != 1:
        step += 1
    return step


def global_stats(
    image: da.Array,
    *,
    percentiles: tuple[float, float] = (0.5, 99.5),
    sample_size: int = 2_000_000,
) -> Delayed:
    """Lazy whole-volume statistics of a Dask array (one task per chunk, one combine).

    Parameters
    ----------
    image : (Z, Y, X) dask.array.Array
    percentiles : (float, float)
        Lower and upper percentiles for robust normalisation.
    sample_size : int
        Voxels sampled for the percentiles, in all (a fixed stride, so results are deterministic).

    Returns
    -------
    Delayed
        Computes to :class:`IntensityStats`.
    """
    step = _coprime_step(int(np.ceil(image.size / sample_size)), image.shape)
    token = tokenize(image, percentiles, step)
    part, name = f"sxtdask-stats-chunk-{token}", f"sxtdask-stats-{token}"
    keys = list(np.ndindex(*image.numblocks))
    dsk: dict[Any, Any] = {(part, *i): (_partial, (image.name, *i), step) for i in keys}
    dsk[name] = (_combine, [(part, *i) for i in keys], percentiles)
    # dask.array.Array does not match dask's own DaskCollection protocol (__dask_scheduler__ is a
    # staticmethod there, a function on Array), though it is a Dask collection
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[image])  # type: ignore[list-item]
    return Delayed(name, graph)


def refuse_nonfinite(stats: IntensityStats, source: str) -> None:
    """Raise :class:`InvalidVolumeError` if the volume holds NaN or infinite voxels."""
    if stats.n_nonfinite:
        raise InvalidVolumeError(
            f"{source}: {stats.n_nonfinite} voxels are NaN or infinite; "
            "a tomogram must hold finite values"
        )


def check_stats(stats: IntensityStats, source: str) -> None:
    """Refuse non-finite voxels; warn (and log) for a constant volume."""
    refuse_nonfinite(stats, source)
    if stats.is_constant:
        msg = f"{source}: the volume is constant ({stats.min:g}); labels will be empty"
        logger.warning(msg)
        warnings.warn(msg, ConstantVolumeWarning, stacklevel=2)
