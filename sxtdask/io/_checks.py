"""Validation shared by the readers: the data must be a real-valued 3-D (Z, Y, X) block."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from sxtdask.errors import ConfigError, InvalidVolumeError

__all__ = ["ASSUMED_VOXEL_NM", "check_dtype", "check_shape", "check_voxel_size", "voxel_size_or_default"]

logger = logging.getLogger(__name__)


def check_dtype(path: Path | str, dtype: np.dtype) -> None:
    """Raise :class:`InvalidVolumeError` unless ``dtype`` is an integer or floating-point type."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise InvalidVolumeError(f"{path}: data are complex ({dtype}); a tomogram must be real-valued")
    if dtype.kind not in "iuf":
        raise InvalidVolumeError(
            f"{path}: data type {dtype} is not numeric; a tomogram must hold integers or floats")


def check_shape(path: Path | str, shape: tuple[int, ...], axes: str | None = None) -> tuple[int, int, int]:
    """Validate a stored shape and return it as (Z, Y, X).

    Arrays with more than 3 axes are squeezed when only 3 axes are longer than 1 (logged).

    Parameters
    ----------
    path : Path
        The file, for messages.
    shape : tuple of int
        Shape as stored.
    axes : str, optional
        Axis letters as stored (TIFF), for messages.
    """
    shape = tuple(int(n) for n in shape)
    if any(n < 0 for n in shape):
        raise InvalidVolumeError(f"{path}: data have a negative axis length (shape {shape})")
    out = shape
    if len(shape) > 3:
        out = tuple(n for n in shape if n != 1)
        if len(out) == 3:
            logger.info("%s: squeezed singleton axes of shape %s to 3-D %s", path, shape, out)
    where = f"shape {shape}" + (f", axes {axes}" if axes else "")
    if len(out) != 3:
        nd = len(out) if len(shape) > 3 else len(shape)
        raise InvalidVolumeError(f"{path}: data are {nd}-D ({where}); a tomogram must be 3-D (Z, Y, X)")
    if 0 in out:
        raise InvalidVolumeError(
            f"{path}: data have a zero-sized axis ({where}); a tomogram needs Z, Y, X >= 1")
    return out


def check_voxel_size(voxel_size_nm: Any) -> tuple[float, float, float]:
    """Validate a (z, y, x) voxel size in nanometres."""
    try:
        vs = tuple(float(v) for v in voxel_size_nm)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"voxel_size_nm {voxel_size_nm!r} must be three numbers (z, y, x)") from err
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise ConfigError(f"voxel_size_nm {voxel_size_nm!r} must be three positive finite numbers (z, y, x)")
    return vs


#: The voxel size a file without one is given, nanometres (marked "assumed" wherever it goes).
ASSUMED_VOXEL_NM = (1.0, 1.0, 1.0)


def voxel_size_or_default(
    path: Path | str, size: tuple[float, float, float] | None, why: str,
) -> tuple[tuple[float, float, float], str | None]:
    """``(size, None)`` if the size is known, else ``((1, 1, 1), why)``: assumed, for the reason
    ``why`` (:func:`sxtdask.io.open_volume` warns unless the caller gives the real size).
    """
    if size is None:
        return ASSUMED_VOXEL_NM, why
    return size, None
