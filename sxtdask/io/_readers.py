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

from sxtdask.errors import InputError, InvalidVolumeError, UnsupportedFormatError
from sxtdask.io._amira import AMIRA_MAGIC, AMIRA_SUFFIXES, open_amira
from sxtdask.io._checks import check_dtype, check_shape, voxel_size_or_default
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


def _npy_truncated(path: Path) -> InputError:
    """The error for a .npy file shorter than its header says, naming expected and actual bytes."""
    with open(path, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(fh)
        expected = fh.tell() + int(np.prod(shape)) * dtype.itemsize
    return InputError(f"{path}: truncated .npy file: the header describes {shape} {dtype} "
                      f"({expected} bytes with the header), but the file has {os.path.getsize(path)} bytes")


def _open_npy(path: Path) -> Volume:
    """Memory-map a ``.npy`` file; its voxel size is unknown (1.0 nm)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "mmap length" in str(err):
            raise _npy_truncated(path) from err
        if "object" in str(err).lower() or "pickle" in str(err).lower():
            raise InvalidVolumeError(
                f"{path}: .npy holds Python objects; a tomogram must be numeric") from err
        raise UnsupportedFormatError(f"{path}: not a valid .npy file ({err})") from err
    except EOFError as err:
        raise InputError(f"{path}: truncated .npy file ({err})") from err
    if not isinstance(arr, np.memmap):
        raise UnsupportedFormatError(f"{path}: not a plain .npy array")
    check_dtype(path, arr.dtype)
    shape = check_shape(path, arr.shape)
    order: Literal["C", "F"] = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
    layout = RawLayout(int(arr.offset), arr.dtype.str, tuple(arr.shape), shape, order)
    del arr
    voxel = voxel_size_or_default(path, None, ".npy files carry no voxel size")
    return Volume(path, layout, voxel, "npy")


def open_volume(path: str | os.PathLike[str]) -> Volume:
    """Open a tomogram lazily, checking that it is a readable 3-D numeric volume.

    Parameters
    ----------
    path : str or Path
        An MRC (``.mrc``, ``.rec``, ``.map``, ``.st``), AmiraMesh binary (``.am``, ``.rec``),
        multi-page TIFF (``.tif``, ``.tiff``) or NumPy (``.npy``) file. The format is chosen by the
        file's first bytes; the extension is a hint.

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
    logger.debug("%s: opened %r", path, vol)
    return vol
