"""Multi-page TIFF stacks and ImageJ hyperstacks (one 2-D page per z slice).

Uncompressed contiguous files are memory-mapped (``tifffile.memmap``); anything else (compressed,
tiled, scattered pages) is read page by page on demand, so a slab read decodes only its own pages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from sxtdask.errors import InputError, InvalidVolumeError, UnsupportedFormatError
from sxtdask.io._checks import check_dtype, check_shape, voxel_size_or_default
from sxtdask.io._volume import RawLayout, TiffPagesLayout, Volume

__all__ = ["TIFF_MAGIC", "TIFF_SUFFIXES", "open_tiff"]

logger = logging.getLogger(__name__)

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
_UNIT_NM = {
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "um": 1e3, "µm": 1e3, "\u03bcm": 1e3, "\\u00b5m": 1e3,
    "micron": 1e3, "microns": 1e3, "micrometer": 1e3, "micrometre": 1e3, "mm": 1e6, "millimeter": 1e6,
    "cm": 1e7, "centimeter": 1e7, "inch": 2.54e7, "a": 0.1, "å": 0.1, "angstrom": 0.1,
}
_RESUNIT_NM = {2: 2.54e7, 3: 1e7}  # TIFF ResolutionUnit: 1 none, 2 inch, 3 centimetre


def _unit_nm(tif: tifffile.TiffFile) -> float | None:
    """Length of the file's unit in nanometres (ImageJ ``unit`` first, then ResolutionUnit)."""
    meta = tif.imagej_metadata or {}
    unit = str(meta.get("unit", "")).strip().lower()
    if unit in _UNIT_NM:
        return _UNIT_NM[unit]
    return _RESUNIT_NM.get(int(tif.pages.first.resolutionunit))


def _voxel_size(path: Path, tif: tifffile.TiffFile) -> tuple[tuple[float, float, float] | None, str]:
    """(z, y, x) voxel size in nm from ImageJ ``spacing``/``unit`` and the resolution tags."""
    unit = _unit_nm(tif)
    if unit is None:
        return None, "the TIFF has no physical unit"
    xres, yres = tif.pages.first.get_resolution()
    if not (xres > 0 and yres > 0):
        return None, "the TIFF resolution tags are not positive"
    x, y = unit / xres, unit / yres
    spacing = (tif.imagej_metadata or {}).get("spacing")
    if spacing is None:
        logger.info("%s: no z spacing in the TIFF metadata; assuming isotropic voxels", path)
    z = float(spacing) * unit if spacing is not None else x
    return (z, y, x), ""


def _layout(path: Path, tif: tifffile.TiffFile, shape: tuple[int, int, int]) -> RawLayout | TiffPagesLayout:
    """A memory-mapped layout if the series is contiguous and uncompressed, else page by page."""
    series = tif.series[0]
    try:
        mm = tifffile.memmap(path, mode="r")
    except (ValueError, OSError) as err:
        logger.info("%s: TIFF not memory-mappable (%s); reading pages on demand", path, err)
    else:
        layout = RawLayout(int(mm.offset), mm.dtype.str, tuple(mm.shape), shape)
        del mm
        return layout
    pages = series.pages
    if len(pages) != shape[0] or any(p is None for p in pages):
        raise UnsupportedFormatError(
            f"{path}: TIFF layout not supported: {len(pages)} pages for {shape[0]} slices "
            "and not memory-mappable")
    first: Any = pages[0]
    if int(np.prod(first.shape)) != shape[1] * shape[2]:
        raise UnsupportedFormatError(
            f"{path}: TIFF pages of shape {first.shape} are not (Y, X) = {shape[1:]}")
    return TiffPagesLayout(0, shape, series.dtype.str)


class _Collect(logging.Handler):
    """Collects tifffile's warnings (it logs, rather than raises, on damaged structures)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _tifffile_warnings() -> Iterator[_Collect]:
    log = logging.getLogger("tifffile")
    handler, propagate = _Collect(), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _check_pages_in_file(path: Path, tif: tifffile.TiffFile) -> None:
    """Every page's data must lie inside the file (a cut file can still parse)."""
    size = path.stat().st_size
    for page in tif.series[0].pages:
        if page is None:
            raise InputError(f"{path}: truncated or corrupted TIFF (a page is missing)")
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)]
        if ends and max(ends) > size:
            raise InputError(
                f"{path}: truncated TIFF (page data end at byte {max(ends)}, the file has {size})")


def open_tiff(path: Path) -> Volume:
    """Open a multi-page TIFF / ImageJ hyperstack as a (Z, Y, X) :class:`Volume`."""
    with _tifffile_warnings() as caught:
        try:
            tif = tifffile.TiffFile(path)
            series = tif.series[0] if tif.series else None
            pages = len(tif.pages)
        except (tifffile.TiffFileError, ValueError, OSError, IndexError) as err:
            raise InputError(f"{path}: cannot read TIFF ({err})") from err
    with tif:
        if caught.messages:
            raise InputError(f"{path}: truncated or corrupted TIFF ({caught.messages[0].strip()})")
        if series is None:
            raise UnsupportedFormatError(f"{path}: TIFF without an image series")
        logger.debug("%s: %d pages", path, pages)
        _check_pages_in_file(path, tif)
        check_dtype(path, series.dtype)
        if "S" in series.axes and series.shape[series.axes.index("S")] > 1:
            raise InvalidVolumeError(
                f"{path}: TIFF has {series.shape[series.axes.index('S')]} samples per pixel (RGB?, shape "
                f"{series.shape}, axes {series.axes}); a tomogram must be single-channel (Z, Y, X)")
        shape = check_shape(path, series.shape, series.axes)
        layout = _layout(path, tif, shape)
        voxel = voxel_size_or_default(path, *_voxel_size(path, tif))
    return Volume(path, layout, voxel, "tiff")
