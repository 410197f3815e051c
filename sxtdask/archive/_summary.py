"""Per-tomogram summary metrics (a lazy, chunked graph) and the archive's summary table and figure.

Definitions (voxel volume from the image's voxel size):

- ``cell_volume_um3``: voxels of ``labels/cell`` > 0 (cytoplasm and nucleus) × voxel volume.
- ``nucleus_volume_um3``: voxels of ``labels/cell`` == 2 × voxel volume.
- ``isg_count``: instances in ``labels/isg``.
- ``isg_mean_diameter_nm``, ``isg_median_diameter_nm``: of the instances' equivalent-sphere
  diameters (:func:`sxtdask.measure.instance_table`'s ``equivalent_diameter_nm``).
- ``isg_density_per_um3``: ``isg_count`` / ``cell_volume_um3`` (ISGs per µm³ of cell, nucleus
  included).
- ``mito_volume_fraction``: voxels of ``labels/mito`` > 0 / voxels of ``labels/cell`` > 0.

A metric whose labels were not made (its task was not run) is NaN; so is a ratio over an empty cell.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dask.delayed import Delayed

from sxtdask._fs import atomic_file
from sxtdask.io import open_image, open_labels
from sxtdask.measure import write_table
from sxtdask.pipeline import METRIC_COLUMNS, summary_metrics

__all__ = ["METRIC_COLUMNS", "SUMMARY_COLUMNS", "summary_frame", "tomogram_metrics",
           "write_summary"]

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS: tuple[str, ...] = ("input", "output", *METRIC_COLUMNS)

_TITLES = {
    "cell_volume_um3": "cell volume (µm³)",
    "nucleus_volume_um3": "nucleus volume (µm³)",
    "isg_count": "ISG count",
    "isg_mean_diameter_nm": "ISG mean diameter (nm)",
    "isg_median_diameter_nm": "ISG median diameter (nm)",
    "isg_density_per_um3": "ISGs per µm³ of cell",
    "mito_volume_fraction": "mitochondrial volume fraction",
}


def tomogram_metrics(
    path: str | os.PathLike[str], *, cell: str | None = "cell", mito: str | None = "mito",
    isg: str | None = "isg", key_name: str = "measure",
) -> Delayed:
    """Lazy summary metrics of one OME-Zarr image from its label images (see the module docs).

    Voxel counts are chunked reductions and the ISG diameters come from the chunked
    :func:`~sxtdask.measure.instance_table`, so no task holds a whole label image.

    Parameters
    ----------
    path : str or Path
        An OME-Zarr image with complete label images.
    cell, mito, isg : str or None
        Names of the label images (0/1/2 cell, binary mitochondria, ISG instances); None for one
        that was not made (its metrics are NaN).
    key_name : str
        Prefix of the final task's key (what the dashboard shows).

    Returns
    -------
    Delayed
        Computes to a dict with the keys :data:`METRIC_COLUMNS` (floats; NaN where not measured).

    Examples
    --------
    >>> m = tomogram_metrics("cell.gt.zarr").compute()  # doctest: +SKIP
    >>> m["cell_volume_um3"], m["isg_count"]            # doctest: +SKIP
    """
    img = open_image(path)
    arrays = {k: open_labels(path, v) for k, v in (("cell", cell), ("mito", mito), ("isg", isg))
              if v is not None}
    return summary_metrics(img.voxel_size_nm, key_name=key_name, **arrays)


def summary_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The summary table: one row per tomogram, columns :data:`SUMMARY_COLUMNS`."""
    data = {c: [r.get(c) for r in rows] for c in SUMMARY_COLUMNS}
    df = pd.DataFrame(data, columns=list(SUMMARY_COLUMNS))
    for c in METRIC_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    df["isg_count"] = df["isg_count"].round().astype("Int64")
    return df


def _figure(df: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(14, 6.5))
    for ax, col in zip(axes.flat, METRIC_COLUMNS, strict=False):
        values = pd.to_numeric(df[col], errors="coerce").astype("float64").to_numpy()
        values = values[np.isfinite(values)]
        ax.set_title(_TITLES[col], fontsize=10)
        if not values.size:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.boxplot(values, widths=0.5, showfliers=False)
        jitter = np.random.default_rng(0).uniform(-0.12, 0.12, values.size)
        ax.scatter(1 + jitter, values, s=14, alpha=0.7, color="tab:blue")
        ax.set_xticks([1], [f"n = {values.size}"])
    axes.flat[-1].axis("off")
    fig.suptitle(f"sxtdask archive: {len(df)} tomogram(s)")
    fig.tight_layout()
    try:
        with atomic_file(out) as partial:
            fig.savefig(partial, format="png", dpi=100)
    finally:
        plt.close(fig)


def write_summary(rows: Sequence[dict[str, Any]], folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``summary.csv``, ``summary.parquet`` and ``summary.png`` (distributions across
    tomograms) into ``folder``, each atomically; return their paths.
    """
    folder = Path(folder)
    df = summary_frame(rows)
    paths = [folder / "summary.csv", folder / "summary.parquet", folder / "summary.png"]
    write_table(df, paths[0], overwrite=True)
    write_table(df, paths[1], overwrite=True)
    _figure(df, paths[2])
    logger.info("%s: summary of %d tomogram(s)", folder, len(df))
    return paths
