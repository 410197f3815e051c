"""The demo's figure: a slice, the ISG mask and the ISG instances in colours."""

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


def save_figure(image: np.ndarray, labels: np.ndarray, out: Path, *, title: str = "") -> Path:
    """Save three panels of one (Y, X) slice: intensities, ISG mask, ISG instances.

    Parameters
    ----------
    image : (Y, X) ndarray
        Linear absorption coefficients.
    labels : (Y, X) integer ndarray
        ISG instance IDs.
    out : Path
        PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), constrained_layout=True)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("SXT slice (LAC)")
    axes[1].imshow(labels > 0, cmap="gray")
    axes[1].set_title("ISG mask")
    axes[2].imshow(_instance_colours(labels))
    axes[2].set_title(f"ISG instances ({len(np.unique(labels)) - 1} in this slice)")
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    logger.info("wrote %s", out)
    return out
