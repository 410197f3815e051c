"""The demo's figure: one slice with the cell, nucleus, mitochondria and ISG instances drawn on it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

__all__ = ["save_figure"]

logger = logging.getLogger(__name__)


def _instance_colours(labels: np.ndarray) -> np.ndarray:
    """RGB image of ``labels`` (2-D) with a stable random colour per ID, black background."""
    rng = np.random.default_rng(0)
    palette = rng.uniform(0.25, 1.0, size=(int(labels.max()) + 1, 3))
    palette[0] = 0.0
    return palette[labels]


def save_figure(image: np.ndarray, out: Path, *, isg: np.ndarray, cell: np.ndarray | None = None,
                mito: np.ndarray | None = None, title: str = "") -> Path:
    """Save panels of one (Y, X) slice: intensities, the organelles outlined on it, ISG instances.

    Parameters
    ----------
    image : (Y, X) ndarray
        Linear absorption coefficients.
    out : Path
        PNG to write.
    isg : (Y, X) integer ndarray
        ISG instance IDs.
    cell : (Y, X) ndarray, optional
        0 background, 1 cytoplasm, 2 nucleus.
    mito : (Y, X) ndarray, optional
        Mitochondria mask.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), constrained_layout=True)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("SXT slice (LAC)")
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
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    logger.info("wrote %s", out)
    return out
