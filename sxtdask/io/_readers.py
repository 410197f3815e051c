r"""Open a tomogram file as a lazy :class:`Volume`, choosing the reader by content.

The first bytes decide the format (``\x93NUMPY``, TIFF byte-order marks, ``# AmiraMesh``, a
plausible MRC header); the extension is only a hint (``.rec`` may be MRC or AmiraMesh, and a weak MRC
header without the ``MAP `` identifier is accepted only under an MRC extension).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from sxtdask.errors import InputError, InvalidVolumeError, SxtdaskError, UnsupportedFormatError
from sxtdask.io._amira import AMIRA_MAGIC, AMIRA_SUFFIXES, open_amira
from sxtdask.io._checks import check_dtype, check_shape, check_voxel_size, voxel_size_or_default
from sxtdask.io._mrc import (
    HEADER_BYTES,
    MRC_SUFFIXES,
    explain_not_mrc,
    open_mrc,
    probe_mrc,
)
from sxtdask.io._tiff import TIFF_MAGIC, TIFF_SUFFIXES, open_tiff
from sxtdask.io._volume import RawLayout, Volume

__all__ = ["SUPPORTED_SUFFIXES", "open_volume"]

logger = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"
NPY_SUFFIXES = frozenset({".npy"})
_SUFFIXES = {"mrc": MRC_SUFFIXES, "amira": AMIRA_SUFFIXES, "tiff": TIFF_SUFFIXES, "npy": NPY_SUFFIXES}
SUPPORTED_SUFFIXES = frozenset().union(*_SUFFIXES.values())
_NAMES = {"mrc": "MRC", "amira": "AmiraMesh", "tiff": "TIFF", "npy": "NumPy .npy"}
_ARTICLES = {"mrc": "an", "amira": "an", "tiff": "a", "npy": "a"}


def _check_file(path: Path) -> tuple[bytes, int]:
    """Check that ``path`` is a readable, non-empty file; return its first 1024 bytes and its size."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; expected a tomogram file (.mrc, .rec, .am, .tif, .npy)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER_BYTES)
    except PermissionError as err:
        raise InputError(f"{path}: not readable (permission denied)") from err
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from err
    size = os.path.getsize(path)
    if size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    return head, size


def _sniff(head: bytes, suffix: str) -> str | None:
    """The format named by the first bytes, or None if they name none."""
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head[:4] in TIFF_MAGIC:
        return "tiff"
    if head.startswith(AMIRA_MAGIC):
        return "amira"
    mrc = probe_mrc(head)
    if mrc is not None and (mrc.has_map_id or suffix in MRC_SUFFIXES):
        return "mrc"
    return None


def _unrecognised(path: Path, head: bytes, size: int) -> InputError:
    """The error for content that no reader recognises, worded by the extension."""
    suffix = path.suffix.lower()
    if suffix in MRC_SUFFIXES:
        return explain_not_mrc(path, head, size)
    for fmt, suffixes in _SUFFIXES.items():
        if suffix in suffixes:
            return UnsupportedFormatError(
                f"{path}: not {_ARTICLES[fmt]} {_NAMES[fmt]} file "
                f"(first bytes {head[:16]!r} do not match the format)")
    known = ", ".join(sorted(SUPPORTED_SUFFIXES))
    return UnsupportedFormatError(
        f"{path}: unknown extension {suffix or '(none)'!r} and unrecognised content; supported: {known}")


def _npy_header(path: Path) -> tuple[int, tuple[int, ...], bool, np.dtype]:
    """Parse a ``.npy`` header: (data offset, shape, fortran order, dtype); never unpickles anything."""
    try:
        with open(path, "rb") as fh:
            major, minor = np.lib.format.read_magic(fh)
            if major not in (1, 2, 3):
                raise UnsupportedFormatError(f"{path}: .npy format version {major}.{minor} is not supported")
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
    except SxtdaskError:
        raise
    except Exception as err:  # numpy's header parser raises many types (tokenize, ast) on bad text
        detail = " ".join(str(err).split())
        raise UnsupportedFormatError(f"{path}: not a valid .npy file ({detail[:200]})") from err
    if not all(type(n) is int for n in shape):  # numpy lets booleans through
        raise UnsupportedFormatError(f"{path}: not a valid .npy file (shape {shape!r} is not integers)")
    return offset, tuple(shape), bool(fortran), np.dtype(dtype)


def _open_npy(path: Path) -> Volume:
    """Memory-map a ``.npy`` file; its voxel size is unknown (1.0 nm)."""
    offset, disk_shape, fortran, dtype = _npy_header(path)
    if dtype.hasobject:
        raise InvalidVolumeError(f"{path}: .npy holds Python objects ({dtype}); a tomogram must be numeric")
    check_dtype(path, dtype)
    shape = check_shape(path, disk_shape)
    expected = offset + int(np.prod(disk_shape, dtype=object)) * dtype.itemsize
    size = os.path.getsize(path)
    if size < expected:
        raise InputError(f"{path}: truncated .npy file: the header describes {disk_shape} {dtype} "
                         f"({expected} bytes with the header), but the file has {size} bytes")
    order: Literal["C", "F"] = "F" if fortran and len(disk_shape) > 1 else "C"
    layout = RawLayout(offset, dtype.str, disk_shape, shape, order)
    voxel, why = voxel_size_or_default(path, None, ".npy files carry none")
    return Volume(path, layout, voxel, "npy", voxel_size_assumed=True, voxel_size_note=why or "")


def open_volume(path: str | os.PathLike[str], *,
                voxel_size_nm: tuple[float, float, float] | None = None) -> Volume:
    """Open a tomogram lazily, checking that it is a readable 3-D numeric volume.

    Parameters
    ----------
    path : str or Path
        An MRC (``.mrc``, ``.rec``, ``.map``, ``.st``), AmiraMesh binary (``.am``, ``.rec``),
        multi-page TIFF (``.tif``, ``.tiff``) or NumPy (``.npy``) file. The format is chosen by the
        file's first bytes; the extension is a hint.
    voxel_size_nm : (z, y, x), optional
        The voxel size in nanometres, replacing the file's. Without it, a file that carries no
        voxel size (npy, a TIFF without units, AmiraMesh without a physical ``BoundingBox``, a
        damaged MRC header) gets 1 nm, marked ``voxel_size_assumed`` (:func:`write_image` warns
        when it writes an image with it).

    Returns
    -------
    Volume
        Shape (Z, Y, X), native dtype, voxel size in nanometres; data are read slab by slab.

    Raises
    ------
    InputError
        Missing, a directory, unreadable, empty or truncated.
    UnsupportedFormatError
        Content is not what the extension says, or the format is not supported.
    InvalidVolumeError
        Not 3-D, a zero-sized axis, or complex / non-numeric data.

    Examples
    --------
    >>> vol = open_volume("cell.mrc")  # doctest: +SKIP
    >>> slab = vol.read(0, 8)          # doctest: +SKIP
    """
    path = Path(path)
    head, size = _check_file(path)
    suffix = path.suffix.lower()
    fmt = _sniff(head, suffix)
    if fmt is None:
        raise _unrecognised(path, head, size)
    if suffix not in _SUFFIXES[fmt]:
        logger.warning("%s: content is %s despite the extension %r; reading it as %s",
                       path, _NAMES[fmt], suffix, _NAMES[fmt])
    if fmt == "mrc":
        vol = open_mrc(path, head, size)
    elif fmt == "amira":
        vol = open_amira(path, size)
    elif fmt == "tiff":
        vol = open_tiff(path)
    else:
        vol = _open_npy(path)
    if voxel_size_nm is not None:
        vol.voxel_size_nm = check_voxel_size(voxel_size_nm)
        vol.voxel_size_assumed, vol.voxel_size_note = False, ""
    elif vol.voxel_size_note:  # write_image warns once the image it assumes a size for exists
        logger.info("%s: no voxel size (%s); 1 nm is assumed unless one is given", path,
                    vol.voxel_size_note)
    logger.debug("%s: opened %r", path, vol)
    return vol
