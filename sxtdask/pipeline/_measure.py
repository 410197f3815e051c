"""Per-tomogram summary metrics from label images: volumes, ISG sizes and densities.

One function serves both a finished store (``sxtdask.archive.tomogram_metrics``) and a pipeline
run whose labels are not written yet (:meth:`TomogramRun.metrics`): it takes lazy label arrays,
so no task holds a whole label image.
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed

from ..measure import instance_table

__all__ = ["METRIC_COLUMNS", "summary_metrics"]

#: The summary's measured columns (floats; NaN where not measured).
METRIC_COLUMNS: tuple[str, ...] = (
    "cell_volume_um3",
    "nucleus_volume_um3",
    "isg_count",
    "isg_mean_diameter_nm",
    "isg_median_diameter_nm",
    "isg_density_per_um3",
    "mito_volume_fraction",
)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 and math.isfinite(num) else math.nan


def _combine(parts: dict[str, Any], voxel_um3: float) -> dict[str, float]:
    """The metrics from voxel counts and the ISG table (runs on a worker)."""
    nan = math.nan
    cell = float(parts["cell"]) if "cell" in parts else nan
    nucleus = float(parts["nucleus"]) if "nucleus" in parts else nan
    out = {k: nan for k in METRIC_COLUMNS}
    out["cell_volume_um3"] = cell * voxel_um3
    out["nucleus_volume_um3"] = nucleus * voxel_um3
    if "mito" in parts:
        out["mito_volume_fraction"] = _ratio(float(parts["mito"]), cell)
    if "isg" in parts:
        diameters = np.asarray(parts["isg"]["equivalent_diameter_nm"], dtype=np.float64)
        out["isg_count"] = float(diameters.size)
        if diameters.size:
            out["isg_mean_diameter_nm"] = float(diameters.mean())
            out["isg_median_diameter_nm"] = float(np.median(diameters))
        out["isg_density_per_um3"] = _ratio(float(diameters.size), out["cell_volume_um3"])
    return out


def _delayed(total: da.Array) -> Delayed:
    """A 0-d array's task as a Delayed, its graph left as built: array optimisation would rename
    the keys it shares with the run that writes the labels, and run that twice.
    """
    return total.to_delayed(optimize_graph=False).ravel()[0]


def summary_metrics(
    voxel_size_nm: tuple[float, float, float], *, cell: da.Array | None = None,
    mito: da.Array | None = None, isg: da.Array | None = None, key_name: str = "measure",
) -> Delayed:
    """Lazy summary metrics of one tomogram from its label arrays.

    Parameters
    ----------
    voxel_size_nm : (z, y, x)
    cell, mito, isg : (Z, Y, X) dask.array.Array, optional
        0/1/2 cell labels, a binary mitochondria mask and ISG instances; a missing one gives NaN
        metrics.
    key_name : str
        Prefix of the final task's key (what the dashboard shows).

    Returns
    -------
    Delayed
        Computes to a dict with the keys :data:`METRIC_COLUMNS`.
    """
    voxel_nm3 = float(np.prod(voxel_size_nm))
    parts: dict[str, Any] = {}
    if cell is not None:
        parts["cell"] = _delayed((cell > 0).sum())
        parts["nucleus"] = _delayed((cell == 2).sum())
    if mito is not None:
        parts["mito"] = _delayed((mito > 0).sum())
    if isg is not None:
        parts["isg"] = instance_table(isg, spacing_nm=tuple(voxel_size_nm))
    token = tokenize(voxel_nm3, parts)
    return dask.delayed(_combine, pure=True)(parts, voxel_nm3 / 1e9,
                                             dask_key_name=f"{key_name}-{token}")
