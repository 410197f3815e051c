"""The demo's figure: one slice with the cell, nucleus, mitochondria and ISG instances drawn on it,
a scale bar, and the ISG errors against the ground truth.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._fs import atomic_file

__all__ = ["ERROR_COLOURS", "make_figure", "save_figure", "scale_bar_length"]

logger = logging.getLogger(__name__)

#: Colours of the error panel's outcomes (matplotlib's colour-blind safe "Dark2" colours).
ERROR_COLOURS: dict[str, str] = {
    "matched": "#1b9e77", "missed": "#d95f02", "false": "#e7298a", "split": "#7570b3",
}
_ERROR_LABELS = {
    "matched": "matched (true positive)", "missed": "missed (false negative)",
    "false": "false (false positive)", "split": "split (one granule, 2+ predicted)",
}


def _instance_colours(labels: np.ndarray) -> np.ndarray:
    """RGB image of ``labels`` (2-D) with a stable random colour per ID, black background."""
    rng = np.random.default_rng(0)
    palette = rng.uniform(0.25, 1.0, size=(int(labels.max()) + 1, 3))
    palette[0] = 0.0
    return palette[labels]


def scale_bar_length(width_nm: float) -> tuple[float, str]:
    """A round scale bar length (1, 2 or 5 × 10^k nm) near a fifth of ``width_nm``, and its label.

    >>> scale_bar_length(7680.0)
    (1000.0, '1 µm')
    >>> scale_bar_length(1200.0)
    (200.0, '200 nm')
    """
    target = max(width_nm / 5.0, 1e-9)
    power = 10.0 ** np.floor(np.log10(target))
    length = max(m * power for m in (1.0, 2.0, 5.0) if m * power <= target)
    if length >= 1000.0:
        return float(length), f"{length / 1000.0:g} µm"
    return float(length), f"{length:g} nm"


def _add_scale_bar(ax: Any, width_px: int, pixel_nm: float) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import (  # type: ignore[import-untyped]
        AnchoredSizeBar,
    )

    length, label = scale_bar_length(width_px * pixel_nm)
    ax.add_artist(AnchoredSizeBar(ax.transData, length / pixel_nm, label, "lower right",
                                  pad=0.4, color="white", frameon=False,
                                  size_vertical=max(1.0, width_px / 120.0)))


def _error_overlay(image: np.ndarray, isg: np.ndarray,
                   errors: Mapping[str, np.ndarray]) -> np.ndarray:
    """RGB: the slice in grey, each outcome's voxels in its colour, predicted ISG outlines dark."""
    from matplotlib.colors import to_rgb

    lo, hi = np.percentile(image, (1, 99)) if image.size else (0.0, 1.0)
    grey = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for name in ("missed", "matched", "split", "false"):  # predictions drawn over missed truth
        mask = np.asarray(errors.get(name, np.zeros(image.shape, bool)), dtype=bool)
        rgb[mask] = 0.25 * rgb[mask] + 0.75 * np.asarray(to_rgb(ERROR_COLOURS[name]))
    edge = np.zeros(isg.shape, bool)
    for axis in (0, 1):  # both voxels of each pair that differ
        step = np.diff(isg, axis=axis) != 0
        lo = [slice(None), slice(None)]
        hi = [slice(None), slice(None)]
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        edge[tuple(lo)] |= step
        edge[tuple(hi)] |= step
    rgb[edge & (isg > 0)] = 0.1  # fragment borders show where one granule was split
    return rgb


def make_figure(image: np.ndarray, *, isg: np.ndarray, cell: np.ndarray | None = None,
                mito: np.ndarray | None = None, errors: Mapping[str, np.ndarray] | None = None,
                error_counts: Mapping[str, int] | None = None, pixel_nm: float | None = None,
                title: str = "") -> Any:
    """The figure of one (Y, X) slice: intensities, the organelles outlined on it, ISG instances,
    and (with ``errors``) the ISG outcomes against the ground truth.

    Parameters
    ----------
    image : (Y, X) ndarray
        Linear absorption coefficients.
    isg : (Y, X) integer ndarray
        ISG instance IDs.
    cell : (Y, X) ndarray, optional
        0 background, 1 cytoplasm, 2 nucleus.
    mito : (Y, X) ndarray, optional
        Mitochondria mask.
    errors : dict of str → (Y, X) bool ndarray, optional
        ``matched``, ``missed``, ``false`` and ``split`` masks of this slice
        (:meth:`sxtdask.metrics.InstanceOutcomes.masks` of the 3-D matching).
    error_counts : dict of str → int, optional
        Instances per outcome in the whole volume (shown in the legend).
    pixel_nm : float, optional
        In-plane voxel size in nanometres: a scale bar on the first panel.

    Returns
    -------
    matplotlib.figure.Figure
        Not attached to pyplot (close it or let it be collected).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    panels = 3 if errors is None else 4
    fig = Figure(figsize=(4.3 * panels, 4.6), constrained_layout=True)
    axes = fig.subplots(1, panels)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("SXT slice (LAC)")
    if pixel_nm is not None and pixel_nm > 0:
        _add_scale_bar(axes[0], image.shape[-1], float(pixel_nm))
    axes[1].imshow(image, cmap="gray")
    drawn = []
    for mask, colour, name in ((None if cell is None else cell > 0, "tab:cyan", "cell"),
                               (None if cell is None else cell == 2, "tab:orange", "nucleus"),
                               (mito, "tab:green", "mitochondria"), (isg > 0, "tab:red", "ISG")):
        if mask is not None and np.any(mask):
            axes[1].contour(np.asarray(mask, dtype=float), levels=[0.5], colors=colour,
                            linewidths=0.8)
            drawn.append(f"{name} ({colour[4:]})")
    axes[1].set_title(", ".join(drawn) or "nothing segmented", fontsize=9)
    axes[2].imshow(_instance_colours(isg))
    axes[2].set_title(f"ISG instances ({len(np.unique(isg)) - 1} in this slice)")
    if errors is not None:
        axes[3].imshow(_error_overlay(np.asarray(image, dtype=float), isg, errors))
        axes[3].set_title("ISG errors against the truth (3-D, IoU > 0.5)", fontsize=9)
        counts = error_counts or {}
        handles = [Patch(color=ERROR_COLOURS[k], label=_ERROR_LABELS[k] + (
            f": {counts[k]}" if k in counts else "")) for k in ERROR_COLOURS]
        axes[3].legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.8)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def save_figure(image: np.ndarray, out: Path, *, isg: np.ndarray, cell: np.ndarray | None = None,
                mito: np.ndarray | None = None, errors: Mapping[str, np.ndarray] | None = None,
                error_counts: Mapping[str, int] | None = None, pixel_nm: float | None = None,
                title: str = "") -> Path:
    """Write :func:`make_figure` (same arguments) as the PNG ``out``, atomically; return ``out``."""
    fig = make_figure(image, isg=isg, cell=cell, mito=mito, errors=errors,
                      error_counts=error_counts, pixel_nm=pixel_nm, title=title)
    with atomic_file(out) as partial:
        fig.savefig(partial, format="png", dpi=100)
    logger.info("wrote %s", out)
    return out
