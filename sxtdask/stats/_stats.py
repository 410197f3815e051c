"""Global intensity statistics: one reduction over all chunks before any per-chunk work.

Every chunk is normalised with the same numbers (DESIGN invariant 3), so there are no seams at chunk
faces and a chunked run equals a whole-volume run. One pass gives min, max, mean, standard deviation,
the count of non-finite voxels and percentiles (from a deterministic strided sample of every chunk,
at most ``sample_size`` voxels in all).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from scipy import ndimage

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
    noise_smooth : float
        The standard deviation of the noise after a Gaussian of σ = 1 voxel, the scale at which
        small objects are detected: 1.4826 × the median absolute difference of smoothed voxels
        ``SMOOTH_LAG`` apart along x (far enough apart to be independent), over √2, from up to
        ``SMOOTH_SLICES`` central slices of every chunk. It follows the noise's own correlation
        (the ramp filter of FBP, the low pass of SIRT), which ``noise`` alone cannot.
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
    noise_smooth: float = float("nan")

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


SMOOTH_LAG = 6
SMOOTH_PERIOD = 16  # noise_smooth samples the slices z ≡ 8 (mod 16) of the volume ...
SMOOTH_SUBSAMPLE = 4  # ... and on them the rows y ≡ 0 (mod 4): the same voxels for any chunking
#: Halo each chunk is read with for ``noise_smooth`` (the σ = 1 kernel's reach, 4, plus the lag
#: along x), so that every sampled value is computed from the same voxels whatever the chunking.
SMOOTH_DEPTH = {0: 4, 1: 4, 2: 4 + SMOOTH_LAG}
_TAPS = np.exp(-0.5 * np.arange(-4, 5) ** 2)
_TAPS /= _TAPS.sum()


def _smooth_diffs(ext: np.ndarray, origin: tuple[int, int, int]) -> np.ndarray:
    """|differences| ``SMOOTH_LAG`` apart along x of the volume smoothed by a Gaussian of σ = 1,
    at the lattice voxels of one chunk's core (``ext`` is the chunk with ``SMOOTH_DEPTH`` voxels
    around it, edges replicated; ``origin`` the core's first voxel). Every value depends only on
    the volume, so any chunking gives the same sample. Pairs whose smoothing saw a non-finite
    voxel or an exact zero (a masked background) are left out.
    """
    dz, dy, dx = SMOOTH_DEPTH[0], SMOOTH_DEPTH[1], SMOOTH_DEPTH[2]
    core = tuple(n - 2 * d for n, d in zip(ext.shape, (dz, dy, dx), strict=True))
    if min(core) <= 0:
        return np.empty(0, dtype=np.float32)
    z0, y0, _ = origin
    x = np.asarray(ext, dtype=np.float64)
    rows = (np.arange(core[1]) + y0) % SMOOTH_SUBSAMPLE == 0
    out = []
    for zl in range(z0 + (8 - z0) % SMOOTH_PERIOD, z0 + core[0], SMOOTH_PERIOD):
        k = zl - z0 + dz
        window = x[k - 4:k + 5]
        finite = np.isfinite(window)
        ok = np.all(finite & (window != 0), axis=0)
        smooth = ndimage.gaussian_filter(np.tensordot(_TAPS, np.where(finite, window, 0.0), axes=1),
                                         1.0, mode="nearest", truncate=4.0)
        valid = ndimage.minimum_filter(ok, size=9, mode="nearest")
        smooth = smooth[dy:dy + core[1]]
        valid = valid[dy:dy + core[1]] & rows[:, None]
        a = slice(dx, dx + core[2])
        b = slice(dx + SMOOTH_LAG, dx + SMOOTH_LAG + core[2])
        keep = valid[:, a] & valid[:, b]
        out.append(np.abs(smooth[:, b] - smooth[:, a])[keep].astype(np.float32))
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def _smooth_diffs_padded(ext: np.ndarray, origin: tuple[int, int, int],
                         pad: tuple[tuple[int, int], ...]) -> np.ndarray:
    """:func:`_smooth_diffs` of a chunk that carries its neighbours' voxels only along some axes:
    the others get ``pad`` voxels of replicated edge (an unchunked axis's own edges).
    """
    if any(p for pair in pad for p in pair):
        ext = np.pad(np.asarray(ext), pad, mode="edge")
    return _smooth_diffs(ext, origin)


def _sample_positions(chunk: tuple[int, ...], origin: tuple[int, ...], shape: tuple[int, ...],
                      step: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the voxels of one chunk (``origin`` in a volume of ``shape``; rows are
    the chunk's flattened leading axes) whose raster index in the whole volume is a multiple of
    ``step``: the same voxels, whatever the chunking.
    """
    nrows = int(np.prod(chunk[:-1], dtype=np.int64))
    if step <= 1:
        rows, cols = np.divmod(np.arange(nrows * chunk[-1]), chunk[-1])
        return rows, cols
    strides = [int(np.prod(shape[k + 1:], dtype=np.int64)) for k in range(len(shape))]
    base = np.zeros(chunk[:-1], np.int64)
    for axis in range(len(chunk) - 1):
        idx = (np.arange(chunk[axis]) + origin[axis]) * strides[axis]
        base += idx.reshape([-1 if a == axis else 1 for a in range(len(chunk) - 1)])
    first = (-(base.ravel() + origin[-1])) % step  # the first sampled column of each row
    cols = first[:, None] + step * np.arange(-(-chunk[-1] // step))
    keep = cols < chunk[-1]
    rows = np.broadcast_to(np.arange(nrows)[:, None], cols.shape)
    return rows[keep], cols[keep]


def _partial(block: np.ndarray, step: int, origin: tuple[int, ...] | None = None,
             shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    x = np.asarray(block)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    finite = np.isfinite(x)
    n_bad = int(x.size - np.count_nonzero(finite))
    good = x[finite] if n_bad else x.reshape(-1)
    total = sumsq = 0.0
    for part in np.array_split(good, max(1, good.size >> 20)):  # float64, a MiB-sized part at a time
        p64 = part.astype(np.float64)
        total += float(p64.sum())
        sumsq += float(np.dot(p64, p64))
    if x.size:
        rows, cols = _sample_positions(x.shape, origin or (0,) * x.ndim, shape or x.shape, step)
        flat = x.reshape(-1, x.shape[-1])
        sample = flat[rows, cols].astype(np.float64)
        pair = cols + 1 < x.shape[-1]  # |x difference| at the sampled voxels (noise fallback)
        diffs = np.abs(flat[rows[pair], cols[pair] + 1].astype(np.float64) - sample[pair])
    else:
        sample = diffs = np.empty(0)
    diffs = diffs[np.isfinite(diffs) & (diffs > 0)].astype(np.float32)
    return {
        "diffs": diffs,
        "n": good.size,
        "bad": n_bad,
        "min": float(good.min()) if good.size else np.inf,
        "max": float(good.max()) if good.size else -np.inf,
        "sum": total,
        "sumsq": sumsq,
        "sample": sample[np.isfinite(sample)].astype(np.float32),
    }


def _combine(parts: list[dict[str, Any]], percentiles: tuple[float, float],
             smooth_parts: Sequence[np.ndarray] = ()) -> IntensityStats:
    n = sum(p["n"] for p in parts)
    bad = sum(p["bad"] for p in parts)
    if n == 0:
        return IntensityStats(np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, 0, bad, percentiles)
    mean = sum(p["sum"] for p in parts) / n
    var = max(sum(p["sumsq"] for p in parts) / n - mean * mean, 0.0)
    lo, hi = np.percentile(np.concatenate([p["sample"] for p in parts]), percentiles)
    diffs = np.concatenate([p["diffs"] for p in parts])
    noise = float(np.median(diffs)) * 1.4826 / np.sqrt(2.0) if diffs.size else float("nan")
    smooth = np.concatenate([np.empty(0, np.float32), *smooth_parts])
    noise_smooth = float(np.median(smooth)) * 1.4826 / np.sqrt(2.0) if smooth.size else float("nan")
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
        noise_smooth=noise_smooth,
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
    dependencies = [image]
    smooth_keys: list[Any] = []
    smooth_tasks: dict[Any, Any] = {}
    if image.ndim == 3 and all(n > SMOOTH_DEPTH[a] for a, n in enumerate(image.shape)):
        # neighbours' voxels only along chunked axes (dask's overlap costs tasks per face, edge
        # and corner piece: 82 for a one-chunk tomogram); the rest is the edge padding, in the task
        depth = {a: SMOOTH_DEPTH[a] if image.numblocks[a] > 1 else 0 for a in range(3)}
        pad = tuple((SMOOTH_DEPTH[a] - depth[a],) * 2 for a in range(3))
        ext = da.overlap.overlap(image, depth=depth, boundary="nearest") \
            if any(depth.values()) else image
        # overlap may rechunk (chunks smaller than the depth): origins come from its own cores
        cores = [[c - 2 * depth[a] for c in chunks] for a, chunks in enumerate(ext.chunks)]
        starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in cores]
        if ext is not image:
            dependencies.append(ext)
        smooth = f"sxtdask-stats-smooth-{token}"
        for j in np.ndindex(*ext.numblocks):
            origin = tuple(int(starts[a][k]) for a, k in enumerate(j))
            smooth_keys.append((smooth, *j))
            smooth_tasks[(smooth, *j)] = (_smooth_diffs_padded, (ext.name, *j), origin, pad)
    origins = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in image.chunks]
    full = tuple(int(n) for n in image.shape)
    dsk: dict[Any, Any] = {
        (part, *i): (_partial, (image.name, *i), step,
                     tuple(int(origins[a][k]) for a, k in enumerate(i)), full)
        for i in keys}
    dsk.update(smooth_tasks)
    dsk[name] = (_combine, [(part, *i) for i in keys], percentiles, smooth_keys)
    # dask.array.Array does not match dask's own DaskCollection protocol (__dask_scheduler__ is a
    # staticmethod there, a function on Array), though it is a Dask collection
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=dependencies)  # type: ignore[arg-type]
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
