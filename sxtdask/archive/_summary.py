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

from sxtdask._fs import atomic_file, write_atomic
from sxtdask.io import open_image, open_labels
from sxtdask.measure import write_table
from sxtdask.pipeline import METRIC_COLUMNS, summary_metrics

__all__ = ["METRIC_COLUMNS", "SUMMARY_COLUMNS", "summary_frame", "tomogram_metrics",
           "write_summary"]

logger = logging.getLogger(__name__)

#: ``voxel_size_assumed``: the input carried no voxel size, so µm³ and nm figures assume 1 nm.
SUMMARY_COLUMNS: tuple[str, ...] = ("input", "output", "voxel_size_assumed", *METRIC_COLUMNS)

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


def _names(df: pd.DataFrame) -> list[str]:
    """Each row's tomogram name: its output image's name without ``.ome.zarr`` (else the input's)."""
    names = []
    for output, inp in zip(df["output"], df["input"], strict=True):
        name = str(output if isinstance(output, str) and output else inp).rsplit("/", 1)[-1]
        names.append(name.removesuffix(".ome.zarr"))
    return names


def _interactive(df: pd.DataFrame, out: Path) -> None:
    """``summary.html``: the figure's metrics as a self-contained bokeh page (BokehJS inlined, no
    network), each point a tomogram whose name, input path and value show on hover.
    """
    from bokeh.embed import file_html
    from bokeh.layouts import gridplot
    from bokeh.models import ColumnDataSource, HoverTool, Range1d
    from bokeh.models.annotations import Label
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    names, inputs = _names(df), [str(v) for v in df["input"]]
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(df))
    plots: list[Any] = []
    for col in METRIC_COLUMNS:
        values = pd.to_numeric(df[col], errors="coerce").astype("float64").to_numpy()
        keep = np.flatnonzero(np.isfinite(values))
        p = figure(title=_TITLES[col], width=280, height=260, x_range=Range1d(start=0.5, end=1.5),
                   tools="pan,wheel_zoom,box_zoom,reset,save")
        p.xaxis.visible = False
        p.xgrid.visible = False
        if not keep.size:
            p.add_layout(Label(x=1, y=0, text="not measured", text_align="center"))
        source = ColumnDataSource({
            "x": 1 + jitter[keep], "y": values[keep], "name": [names[i] for i in keep],
            "input": [inputs[i] for i in keep]})
        dots = p.scatter("x", "y", source=source, size=9, alpha=0.7, color="#1f77b4")
        p.add_tools(HoverTool(renderers=[dots], tooltips=[
            ("tomogram", "@name"), ("input", "@input"), (_TITLES[col], "@y{0.[000]}")]))
        plots.append(p)
    grid = gridplot(plots, ncols=4, toolbar_location="right")
    write_atomic(out, file_html(grid, INLINE, title=f"sxtdask archive: {len(df)} tomogram(s)"))


def write_summary(rows: Sequence[dict[str, Any]], folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``summary.csv``, ``summary.parquet``, ``summary.png`` (distributions across
    tomograms) and ``summary.html`` (the same, interactive: each point names its tomogram on
    hover; self-contained, it opens without network) into ``folder``, each atomically; return
    their paths.
    """
    folder = Path(folder)
    df = summary_frame(rows)
    paths = [folder / "summary.csv", folder / "summary.parquet", folder / "summary.png",
             folder / "summary.html"]
    write_table(df, paths[0], overwrite=True)
    write_table(df, paths[1], overwrite=True)
    _figure(df, paths[2])
    _interactive(df, paths[3])
    logger.info("%s: summary of %d tomogram(s)", folder, len(df))
    return paths
