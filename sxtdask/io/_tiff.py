"""Multi-page TIFF stacks and ImageJ hyperstacks (one 2-D page per z slice).

Every page (IFD) of the file must have one shape and dtype, else the file is refused naming the
first odd page; the volume is all of them (the file's one series, or every page in file order when
a writer stored each page as its own series). Uncompressed contiguous files are memory-mapped
(``tifffile.memmap``); anything else (compressed, tiled, scattered pages) is read page by page on
demand, so a slab read decodes only its own pages.
"""

from __future__ import annotations

import logging
import mmap
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from sxtdask.errors import InputError, InvalidVolumeError, SxtdaskError, UnsupportedFormatError
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


def _positive(value: Any) -> float | None:
    """``value`` as a positive finite float, else None."""
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def _voxel_size(path: Path, tif: tifffile.TiffFile) -> tuple[tuple[float, float, float] | None, str]:
    """(z, y, x) voxel size in nm from ImageJ ``spacing``/``unit`` and the resolution tags.

    A missing unit, or a resolution or spacing that is not a positive finite number, leaves the
    voxel size unknown (None) and says why.
    """
    unit = _unit_nm(tif)
    if unit is None:
        return None, "the TIFF has no physical unit"
    try:
        xres, yres = tif.pages.first.get_resolution()
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        xres, yres = 0.0, 0.0
    x = _positive(unit / xres) if _positive(xres) else None
    y = _positive(unit / yres) if _positive(yres) else None
    if x is None or y is None:
        return None, f"the TIFF resolution tags ({xres}, {yres}) are not positive finite numbers"
    spacing = (tif.imagej_metadata or {}).get("spacing")
    if spacing is None:
        logger.info("%s: no z spacing in the TIFF metadata; assuming isotropic voxels", path)
        return (x, y, x), ""
    z = _positive(spacing)
    z = _positive(z * unit) if z is not None else None
    if z is None:
        return None, f"the ImageJ z spacing {spacing!r} is not a positive finite number"
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


def _one_line(err: object) -> str:
    """An exception or message as one line."""
    return " ".join(str(err).split())


def _check_frames_in_file(path: Path, series: Any) -> None:
    """The data of a series with frames beyond the file's pages (ImageJ) must lie inside the file."""
    if series.dataoffset is None:
        _check_pages_in_file(path, series.pages)
        return
    size, end = path.stat().st_size, int(series.dataoffset) + int(series.nbytes)
    if end > size:
        raise InputError(f"{path}: truncated TIFF (page data end at byte {end}, the file has {size})")


def _check_pages_in_file(path: Path, pages: Any) -> None:
    """Every page's data must lie inside the file (a cut file can still parse)."""
    size = path.stat().st_size
    for page in pages:
        if page is None:
            raise InputError(f"{path}: truncated or corrupted TIFF (a page is missing)")
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)]
        if ends and max(ends) > size:
            raise InputError(
                f"{path}: truncated TIFF (page data end at byte {max(ends)}, the file has {size})")


def _describe(page: Any) -> str:
    """``64×80 uint8`` for a page (RGB pages show their samples: ``64×80×3``)."""
    if page.dtype is None:
        dtype = f"{page.bitspersample}-bit sample format {int(page.sampleformat)}"
    else:
        dtype = page.dtype.name
    return f"{'×'.join(str(n) for n in page.shape)} {dtype}"


_TYPE_FORMAT = {1: "B", 3: "H", 4: "I", 6: "b", 7: "B", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}
#: Tags that fix a page's shape and dtype: width, length, bits and samples per pixel, sample format, depth.
_GEOMETRY_TAGS = (256, 257, 258, 277, 339, 32997)
_DATA_TAGS = {273: 279, 324: 325}  # strip / tile offsets: their byte counts
_MAX_PAGES = 1 << 22


def _read_exactly(fh: Any, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise struct.error("unexpected end of file")
    return data


def _tag_values(fh: Any, bo: str, entry: bytes, big: bool, limit: int = 64) -> tuple[Any, ...]:
    """The values of one IFD entry (read from where they are stored if they do not fit inline)."""
    typ = struct.unpack(bo + "H", entry[2:4])[0]
    count = struct.unpack(bo + ("Q" if big else "I"), entry[4:12] if big else entry[4:8])[0]
    code = _TYPE_FORMAT.get(typ)
    if code is None or count > limit:
        return ("?", typ, count)
    size = struct.calcsize(code) * count
    data = entry[12:20] if big else entry[8:12]
    if size > len(data):
        fh.seek(struct.unpack(bo + ("Q" if big else "I"), data)[0])
        data = _read_exactly(fh, size)
    return struct.unpack(bo + code * count, data[:size])


def _page_signatures(path: Path) -> tuple[list[tuple[Any, ...]], int]:
    """Walk the file's IFD chain: per page, the values of the tags that fix its shape and dtype, and
    the byte where the last page data end.

    A few hundred bytes per page (tifffile parses every tag of a page: too slow for a check of
    thousands of slices). Raises ``struct.error`` or ValueError on a damaged chain.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as fh:
        head = _read_exactly(fh, 16)
        bo = "<" if head[:2] == b"II" else ">"
        big = struct.unpack(bo + "H", head[2:4])[0] == 43
        fmt, entry_size = ("Q", 20) if big else ("I", 12)
        offset = struct.unpack(bo + fmt, head[8:16] if big else head[4:8])[0]
        seen: set[int] = set()
        signatures, end = [], 0
        while offset:
            if offset in seen or len(seen) >= _MAX_PAGES:
                raise ValueError(f"the IFD chain loops or is too long (at byte {offset})")
            seen.add(offset)
            fh.seek(offset)
            n = struct.unpack(bo + ("Q" if big else "H"), _read_exactly(fh, 8 if big else 2))[0]
            if n > 4096:
                raise ValueError(f"{n} tags in the IFD at byte {offset}")
            entries = _read_exactly(fh, n * entry_size)
            offset = struct.unpack(bo + fmt, _read_exactly(fh, 8 if big else 4))[0]
            values = {}
            for k in range(n):
                entry = entries[k * entry_size: (k + 1) * entry_size]
                tag = struct.unpack(bo + "H", entry[:2])[0]
                if tag in _GEOMETRY_TAGS:
                    values[tag] = _tag_values(fh, bo, entry, big)
                elif tag in _DATA_TAGS or tag in _DATA_TAGS.values():
                    values[tag] = _tag_values(fh, bo, entry, big, limit=1 << 24)
            signatures.append(tuple(values.get(t) for t in _GEOMETRY_TAGS))
            for offsets, counts in _DATA_TAGS.items():
                o, c = values.get(offsets, ()), values.get(counts, ())
                if o and c and o[0] != "?" and c[0] != "?":
                    end = max([end] + [a + b for a, b in zip(o, c, strict=False)])
        return signatures, end


def _check_pages_uniform(path: Path, tif: tifffile.TiffFile) -> int:
    """Check that every page (IFD) of the file has page 0's shape and dtype and its data inside the
    file; return the page count.

    Raises
    ------
    InputError
        The page data end beyond the end of the file (it was cut), or the page chain is damaged.
    UnsupportedFormatError
        Naming the first page whose shape or dtype differs from page 0's, or one of an unsupported
        pixel type.
    """
    signatures, end = _page_signatures(path)
    size = path.stat().st_size
    if end > size:
        raise InputError(f"{path}: truncated TIFF (page data end at byte {end}, the file has {size})")
    n = len(tif.pages)
    if len(signatures) != n:
        raise InputError(f"{path}: corrupted TIFF page chain ({len(signatures)} pages found, tifffile "
                         f"reads {n})")
    first: Any = tif.pages[0]
    if first.dtype is None:
        raise UnsupportedFormatError(f"{path}: TIFF pixel type not supported (page 0 is {_describe(first)})")
    for i, signature in enumerate(signatures[1:], start=1):
        if signature == signatures[0]:
            continue
        page: Any = tif.pages[i]  # the tags differ: compare what they mean
        if page.shape != first.shape or page.dtype != first.dtype:
            before = "page 0 is" if i == 1 else f"pages 0–{i - 1} are"
            raise UnsupportedFormatError(
                f"{path}: page {i} is {_describe(page)}, {before} {_describe(first)}; sxtdask reads "
                "TIFF stacks whose pages all have one shape and dtype")
    return n


def _check_samples(path: Path, shape: tuple[int, ...], axes: str) -> None:
    if "S" in axes and shape[axes.index("S")] > 1:
        raise InvalidVolumeError(
            f"{path}: TIFF has {shape[axes.index('S')]} samples per pixel (RGB?, shape "
            f"{shape}, axes {axes}); a tomogram must be single-channel (Z, Y, X)")


def _series_volume(path: Path, tif: tifffile.TiffFile, npages: int) -> tuple[
        tuple[int, int, int], RawLayout | TiffPagesLayout]:
    """Shape and layout of the file's one image series (which must hold every page)."""
    series = tif.series[0]
    if len(series.pages) < npages:
        raise UnsupportedFormatError(
            f"{path}: the TIFF has {npages} pages but its image series holds {len(series.pages)}; "
            "sxtdask reads TIFF stacks whose pages all belong to one image")
    if len(series.pages) > npages:  # ImageJ: frames after the last page, contiguous
        _check_frames_in_file(path, series)
    check_dtype(path, series.dtype)
    _check_samples(path, series.shape, series.axes)
    shape = check_shape(path, series.shape, series.axes)
    return shape, _layout(path, tif, shape)


def _pages_volume(path: Path, tif: tifffile.TiffFile, npages: int) -> tuple[
        tuple[int, int, int], TiffPagesLayout]:
    """Shape and layout of a stack of equal pages split over several series: page z is slice z."""
    if tif.is_ome or tif.is_imagej:
        kind = "OME" if tif.is_ome else "ImageJ"
        raise UnsupportedFormatError(
            f"{path}: the {kind} TIFF holds {len(tif.series)} images; sxtdask reads one 3-D image per file")
    first: Any = tif.pages[0]  # every page has its shape and dtype, and its data in the file
    check_dtype(path, first.dtype)
    axes = "I" + first.axes
    _check_samples(path, (npages,) + first.shape, axes)
    shape = check_shape(path, (npages,) + first.shape, axes)
    logger.info("%s: %d TIFF series of equal pages read as one stack of %d slices", path,
                len(tif.series), npages)
    return shape, TiffPagesLayout(None, shape, first.dtype.str)


def _structure(path: Path, tif: tifffile.TiffFile) -> tuple[
        tuple[int, int, int], RawLayout | TiffPagesLayout]:
    """Shape and layout of the whole file: all its pages, or an error saying why not."""
    with _tifffile_warnings() as caught:
        try:
            npages = _check_pages_uniform(path, tif) if len(tif.pages) else 0
            nseries = len(tif.series)
        except SxtdaskError:
            raise
        except Exception as err:  # tifffile raises many types on a damaged structure
            raise InputError(f"{path}: truncated or corrupted TIFF ({_one_line(err)})") from err
    if caught.messages:
        raise InputError(f"{path}: truncated or corrupted TIFF ({_one_line(caught.messages[0])})")
    if not npages or nseries == 0:
        raise UnsupportedFormatError(f"{path}: TIFF without an image series")
    logger.debug("%s: %d pages, %d series", path, npages, nseries)
    if nseries == 1:
        return _series_volume(path, tif, npages)
    return _pages_volume(path, tif, npages)


def open_tiff(path: Path) -> Volume:
    """Open a multi-page TIFF / ImageJ hyperstack as a (Z, Y, X) :class:`Volume`.

    Every page (IFD) of the file must have one shape and dtype; the volume is the file's one image
    series, or, when a writer stored each page as its own series, all pages in file order.

    Raises
    ------
    InputError
        Unreadable, truncated or corrupted (tifffile's complaint is quoted).
    UnsupportedFormatError
        Pages of different shapes or dtypes (the first odd page is named), several OME/ImageJ
        images, pages outside the image series, or a layout that cannot be read.
    InvalidVolumeError
        RGB pages, not 3-D, or non-numeric data.
    """
    with _tifffile_warnings() as caught:
        try:
            tif = tifffile.TiffFile(path)
        except Exception as err:  # tifffile raises many types on a damaged structure
            raise InputError(f"{path}: truncated or corrupted TIFF ({_one_line(err)})") from err
    with tif:
        if caught.messages:
            raise InputError(f"{path}: truncated or corrupted TIFF ({_one_line(caught.messages[0])})")
        shape, layout = _structure(path, tif)
        voxel, why = voxel_size_or_default(path, *_voxel_size(path, tif))
    return Volume(path, layout, voxel, "tiff", voxel_size_assumed=why is not None,
                  voxel_size_note=why or "")
