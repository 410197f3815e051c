"""Where interpolated labels go: a label image of an OME-Zarr store (written block by block by
the workers), or a tomogram file (.npy, .tif, .mrc) written by the client block by block into a
hidden temporary file that is renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from sxtdask._fs import atomic_file
from sxtdask.errors import ConfigError

from ._graph import Interpolation

__all__ = ["FILE_SUFFIXES", "block_counts", "block_writes", "tomogram_file", "uncertainty_path"]

logger = logging.getLogger(__name__)

#: Tomogram files the labels can be written to.
FILE_SUFFIXES = (".npy", ".tif", ".tiff", ".mrc")


def uncertainty_path(out: str | os.PathLike[str]) -> Path:
    """Where a tomogram file's uncertainty map goes: ``labels.tif`` → ``labels.uncertainty.tif``."""
    p = Path(out)
    return p.with_name(f"{p.stem}.uncertainty{p.suffix}")


def block_counts(labels: np.ndarray, info: dict[str, Any], classes: tuple[int, ...]) -> dict[str, Any]:
    """A block's report: its seeds and its voxels per class."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=max(classes, default=0) + 1)
    return {"seeds": int(info.get("seeds", 0)),
            "voxels": {int(c): int(counts[c]) for c in classes if c < len(counts)}}


def _write_block(part: tuple[Any, ...], target: Any, unc_target: Any, box: tuple[tuple[int, int], ...],
                 classes: tuple[int, ...]) -> dict[str, Any]:
    labels, unc, info = part
    region = tuple(slice(lo, hi) for lo, hi in box)
    target[region] = labels
    if unc_target is not None and unc is not None:
        unc_target[region] = unc
    return block_counts(labels, info, classes)


def block_writes(interp: Interpolation, target: Any, unc_target: Any = None) -> list[Delayed]:
    """One lazy write per block of ``interp`` into ``target`` (e.g. the Zarr array of
    :func:`sxtdask.io.create_labels`; blocks should cover whole chunks of it), and of the
    uncertainty into ``unc_target``. Each computes to ``{"seeds": n, "voxels": {class: n}}``.
    """
    labels = interp.labels
    token = tokenize(labels.name, target, unc_target)
    name = f"{labels.name.rsplit('-', 2)[0]}-write-{token}"
    dsk: dict[Any, Any] = {}
    out = []
    for idx, part, box in zip(np.ndindex(*labels.numblocks), interp.blocks, interp.boxes, strict=True):
        key = (name, *idx)
        dsk[key] = (_write_block, part.key, target, unc_target if interp.uncertainty is not None else None,
                    box, interp.classes)
        out.append(key)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=interp.blocks)  # type: ignore[arg-type]
    return [Delayed(k, graph, layer=name) for k in out]


@contextmanager
def tomogram_file(path: str | os.PathLike[str], shape: tuple[int, int, int], dtype: Any,
                  voxel_size_nm: tuple[float, float, float] | None = None) -> Iterator[np.ndarray]:
    """A writable memory map of a new tomogram file (``.npy``, ``.tif``/``.tiff`` or ``.mrc``);
    the file appears at ``path`` only when the block ends without an error.

    Raises
    ------
    ConfigError
        An unknown suffix, or labels an MRC file cannot hold (values beyond 65535).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ConfigError(f"{path}: a tomogram file is {', '.join(FILE_SUFFIXES)} (or give an "
                          "OME-Zarr store)")
    dtype = np.dtype(dtype)
    with atomic_file(path) as tmp:
        if suffix == ".npy":
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            yield arr
            arr.flush()
            del arr
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.memmap(tmp, shape=shape, dtype=dtype, photometric="minisblack",
                                  metadata={"axes": "ZYX"})
            yield arr
            arr.flush()
            del arr
        else:
            import mrcfile

            if dtype.itemsize > 2 or dtype.kind not in "iu":
                raise ConfigError(f"{path}: MRC files hold labels up to 65535 (mode 6); these "
                                  f"need {dtype}: write .npy or .tif")
            mode_dtype = np.dtype(np.int8 if dtype == np.int8 else np.int16 if dtype == np.int16
                                  else np.uint16)
            with mrcfile.new_mmap(tmp, shape=shape, mrc_mode={np.dtype(np.int8): 0,
                                                              np.dtype(np.int16): 1}.get(mode_dtype, 6),
                                  overwrite=True) as mrc:
                if voxel_size_nm is not None:
                    mrc.voxel_size = tuple(float(v) * 10.0 for v in voxel_size_nm[::-1])
                yield mrc.data
                mrc.update_header_stats()
