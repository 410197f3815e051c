"""Per-instance statistics as a lazy Dask graph: block partials, a tree reduction, one table.

The graph has one ``sxtdask-stats-partial`` task per block of ``labels`` (holding one block of the
labels and of the image), ``sxtdask-stats-combine`` tasks that merge at most ``_FAN_IN`` partials
each, level by level (:func:`sxtdask._tree.tree_reduce`), and one ``sxtdask-stats-table`` task
that turns the final partial into a :class:`pandas.DataFrame`. Its size is linear in the number of
blocks, and no task sees the whole volume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import dask
import dask.array as da
import numpy as np
import pandas as pd
from dask.base import tokenize
from dask.delayed import Delayed

from sxtdask._tree import tree_reduce
from sxtdask.errors import ConfigError
from sxtdask.measure._partials import Partial, block_partial, combine_partials

__all__ = ["TABLE_COLUMNS", "instance_table", "regionprops_table"]

logger = logging.getLogger(__name__)

TABLE_COLUMNS: tuple[str, ...] = (
    "label",
    "volume_voxels",
    "volume_um3",
    "centroid_z_nm",
    "centroid_y_nm",
    "centroid_x_nm",
    "bbox_min_z_nm",
    "bbox_min_y_nm",
    "bbox_min_x_nm",
    "bbox_max_z_nm",
    "bbox_max_y_nm",
    "bbox_max_x_nm",
    "equivalent_diameter_nm",
    "mean_absorption",
)

_AXES = ("z", "y", "x")
_FAN_IN = 8
_NM3_PER_UM3 = 1e9


def _as_dask(array: da.Array | np.ndarray) -> da.Array:
    """Wrap a numpy array (or anything array-like) as a Dask array; leave Dask arrays alone."""
    return array if isinstance(array, da.Array) else da.asarray(array)


def _check_spacing(spacing_nm: Sequence[float]) -> tuple[float, float, float]:
    """Return the spacing as 3 floats, or raise ConfigError if it is not 3 finite positive values."""
    values = tuple(float(s) for s in spacing_nm)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ConfigError(
            f"spacing_nm must be 3 finite positive voxel sizes (z, y, x) in nm; got {tuple(spacing_nm)}"
        )
    return values


def _check_inputs(labels: da.Array, image: da.Array | None) -> da.Array | None:
    """Validate labels/image dtypes and shapes; return the image rechunked like the labels."""
    if labels.ndim != 3:
        raise ConfigError(f"labels must be 3-D (z, y, x); got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"labels must have an integer dtype; got {labels.dtype}")
    if image is None:
        return None
    if image.shape != labels.shape:
        raise ConfigError(f"image shape {image.shape} must equal labels shape {labels.shape}")
    if image.dtype.kind not in "biuf":
        raise ConfigError(f"image must have a real numeric dtype; got {image.dtype}")
    if image.chunks != labels.chunks:
        logger.debug("rechunking image from %s to the labels' chunks %s", image.chunks, labels.chunks)
        image = image.rechunk(labels.chunks)
    return image


def _block_offsets(chunks: tuple[tuple[int, ...], ...]) -> list[np.ndarray]:
    """Global start index of every block along each axis, from a Dask ``chunks`` tuple."""
    return [np.concatenate(([0], np.cumsum(c)[:-1])).astype(np.int64) for c in chunks]


def _partial_tasks(labels: da.Array, image: da.Array | None, token: str) -> list[Delayed]:
    """One delayed :func:`block_partial` per block of ``labels``, in raster order of blocks."""
    name = f"sxtdask-stats-partial-{token}"
    offsets = _block_offsets(labels.chunks)
    label_blocks = labels.to_delayed()
    image_blocks = None if image is None else image.to_delayed()
    task = dask.delayed(block_partial, pure=True)
    tasks = []
    for index in np.ndindex(*label_blocks.shape):
        offset = tuple(int(o[i]) for o, i in zip(offsets, index, strict=True))
        image_block = None if image_blocks is None else image_blocks[index]
        tasks.append(task(label_blocks[index], image_block, offset, dask_key_name=(name, *index)))
    return tasks


def partial_to_frame(
    partial: Partial, spacing_nm: tuple[float, float, float], has_image: bool
) -> pd.DataFrame:
    """Turn a fully reduced partial into the instance table (columns :data:`TABLE_COLUMNS`)."""
    count = partial["count"]
    voxel_nm3 = spacing_nm[0] * spacing_nm[1] * spacing_nm[2]
    volume_nm3 = count * voxel_nm3
    columns: dict[str, np.ndarray] = {
        "label": partial["label"].astype(np.int64),
        "volume_voxels": count.astype(np.int64),
        "volume_um3": volume_nm3 / _NM3_PER_UM3,
    }
    for axis, spacing in zip(_AXES, spacing_nm, strict=True):
        columns[f"centroid_{axis}_nm"] = partial[f"sum_{axis}"] / count * spacing
    for axis, spacing in zip(_AXES, spacing_nm, strict=True):
        columns[f"bbox_min_{axis}_nm"] = partial[f"min_{axis}"] * spacing
    for axis, spacing in zip(_AXES, spacing_nm, strict=True):
        columns[f"bbox_max_{axis}_nm"] = (partial[f"max_{axis}"] + 1) * spacing
    columns["equivalent_diameter_nm"] = np.cbrt(6.0 * volume_nm3 / np.pi)
    if has_image:
        columns["mean_absorption"] = partial["sum_intensity"] / count
    else:
        columns["mean_absorption"] = np.full(count.size, np.nan)
    return pd.DataFrame({name: np.asarray(columns[name]) for name in TABLE_COLUMNS})


def instance_table(
    labels: da.Array | np.ndarray,
    image: da.Array | np.ndarray | None = None,
    *,
    spacing_nm: Sequence[float] = (1.0, 1.0, 1.0),
) -> Delayed:
    """Build the lazy per-instance statistics table of a label volume.

    Each block of ``labels`` yields a small partial table (count, index sums, index bounds and
    intensity sum per label present); partials are merged by a tree reduction (fan-in 8), so an
    instance split over blocks is one row with its full volume.

    Parameters
    ----------
    labels : (Z, Y, X) dask.array.Array of int
        Instance labels; 0 is background, other values must be positive. numpy arrays are wrapped.
    image : (Z, Y, X) dask.array.Array, optional
        Intensity (absorption) volume of the same shape; rechunked to ``labels.chunks`` if needed.
    spacing_nm : tuple of 3 float, nanometres
        Voxel size (z, y, x).

    Returns
    -------
    dask.delayed.Delayed
        Computes to a :class:`pandas.DataFrame` with columns :data:`TABLE_COLUMNS`, one row per
        label, sorted by label. ``mean_absorption`` is NaN when ``image`` is None.

    Raises
    ------
    ConfigError
        Labels not 3-D or not integer, an image of another shape, or a bad spacing; negative
        labels raise it when the graph is computed.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((4, 4, 4), dtype=np.uint16); labels[1:3, 1:3, 1:3] = 7
    >>> instance_table(labels, spacing_nm=(10, 10, 10)).compute()["volume_um3"].tolist()
    [8e-06]
    """
    spacing = _check_spacing(spacing_nm)
    labels = _as_dask(labels)
    image = None if image is None else _as_dask(image)
    image = _check_inputs(labels, image)
    token = tokenize(labels, image, spacing)
    parts = _partial_tasks(labels, image, token)
    logger.debug("stats graph: %d block partial(s) for labels of shape %s", len(parts), labels.shape)
    reduced = tree_reduce(parts, combine_partials, f"sxtdask-stats-combine-{token}", _FAN_IN)
    to_frame = dask.delayed(partial_to_frame, pure=True)
    return to_frame(reduced, spacing, image is not None, dask_key_name=f"sxtdask-stats-table-{token}")


def regionprops_table(
    labels: da.Array | np.ndarray,
    image: da.Array | np.ndarray | None = None,
    *,
    spacing_nm: Sequence[float] = (1.0, 1.0, 1.0),
) -> pd.DataFrame:
    """Compute the per-instance statistics table now (``instance_table(...).compute()``).

    Parameters
    ----------
    labels : (Z, Y, X) dask.array.Array or ndarray of int
        Instance labels; 0 is background.
    image : (Z, Y, X) dask.array.Array or ndarray, optional
        Intensity (absorption) volume of the same shape.
    spacing_nm : tuple of 3 float, nanometres
        Voxel size (z, y, x).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TABLE_COLUMNS`, one row per label, sorted by label.
    """
    return instance_table(labels, image, spacing_nm=spacing_nm).compute()
