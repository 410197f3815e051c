"""MRC / REC / MAP / ST tomograms, opened through ``mrcfile.mmap(..., permissive=True)``.

The 1024-byte header is probed first (dimensions, mode, extended header size, byte order) so that
text files renamed ``.mrc`` and truncated files fail with a clear message before ``mrcfile`` maps
anything. Damaged headers (``mrcfile`` warnings, a NaN/0/inf voxel size, an axis order that is no
permutation) raise a :class:`HeaderWarning` and fall back to a voxel size of 1 nm (and x, y, z for
columns, rows, sections). A valid non-standard axis order ``(mapc, mapr, maps)`` is transposed to
(Z, Y, X); a header whose block mrcfile maps differently from what it says is refused.
"""

from __future__ import annotations

import logging
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import mrcfile
import numpy as np

from sxtdask.errors import InputError, InvalidVolumeError, UnsupportedFormatError
from sxtdask.io._checks import check_dtype, check_shape
from sxtdask.io._volume import ByteOrder, HeaderWarning, RawLayout, Volume

__all__ = ["MRC_SUFFIXES", "MrcHeader", "open_mrc", "probe_mrc"]

logger = logging.getLogger(__name__)

MRC_SUFFIXES = frozenset({".mrc", ".rec", ".map", ".st", ".mrcs", ".ali", ".preali"})
HEADER_BYTES = 1024
_ITEMSIZE = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2}
_IMOD_STAMP = 1146047817
_MAX_DIM = 1 << 24


@dataclass(frozen=True)
class MrcHeader:
    """The fields of an MRC header needed to locate and check the data block."""

    byteorder: ByteOrder
    nx: int
    ny: int
    nz: int
    mode: int
    nsymbt: int
    has_map_id: bool
    unsigned_bytes: bool
    axis_order: tuple[int, int, int] = (1, 2, 3)

    @property
    def itemsize(self) -> int:
        """Bytes per voxel of the mode."""
        return _ITEMSIZE.get(self.mode, 1)

    @property
    def data_bytes(self) -> int:
        """Size of the data block, bytes."""
        return self.nx * self.ny * self.nz * self.itemsize


def _plausible(nx: int, ny: int, nz: int, mode: int) -> bool:
    dims_ok = all(0 <= n <= _MAX_DIM for n in (nx, ny, nz))
    return dims_ok and (mode in _ITEMSIZE or mode == 101)


def probe_mrc(head: bytes) -> MrcHeader | None:
    """Parse the first 1024 bytes of a file as an MRC header; ``None`` if they are not plausible.

    Dimensions must lie in 0..2**24, the mode must be a known MRC mode and the extended header size
    non-negative, in either byte order (the machine stamp decides which is tried first).
    """
    if len(head) < HEADER_BYTES:
        return None
    # the machine stamp's order first, then the other one
    orders: tuple[ByteOrder, ByteOrder] = (">", "<") if head[212:214] == b"\x11\x11" else ("<", ">")
    for bo in orders:
        nx, ny, nz, mode = struct.unpack(bo + "4i", head[:16])
        (nsymbt,) = struct.unpack(bo + "i", head[92:96])
        if _plausible(nx, ny, nz, mode) and 0 <= nsymbt < (1 << 31) - HEADER_BYTES:
            stamp, flags = struct.unpack(bo + "2i", head[152:160])
            unsigned = mode == 0 and stamp == _IMOD_STAMP and not flags & 1
            mapc, mapr, maps = struct.unpack(bo + "3i", head[64:76])
            return MrcHeader(bo, nx, ny, nz, mode, nsymbt, head[208:212] == b"MAP ", unsigned,
                             (mapc, mapr, maps))
    return None


def explain_not_mrc(path: Path, head: bytes, size: int) -> InputError:
    """The error for a file with an MRC suffix whose header is not an MRC header."""
    if size < HEADER_BYTES and len(head) >= 16:
        nx, ny, nz, mode = struct.unpack("<4i", head[:16])
        if _plausible(nx, ny, nz, mode) and min(nx, ny, nz) > 0:
            return InputError(f"{path}: truncated MRC file: {size} bytes, shorter than the "
                              f"{HEADER_BYTES}-byte header")
    return UnsupportedFormatError(
        f"{path}: not an MRC file (first bytes {head[:16]!r} are not a plausible MRC header)")


def _check_header(path: Path, hdr: MrcHeader, size: int) -> None:
    if hdr.mode in (3, 4):
        raise InvalidVolumeError(f"{path}: MRC mode {hdr.mode} is complex; a tomogram must be real-valued")
    if hdr.mode == 101:
        raise UnsupportedFormatError(f"{path}: MRC mode 101 (4-bit packed) is not supported")
    check_shape(path, (hdr.nz, hdr.ny, hdr.nx))
    expected = HEADER_BYTES + hdr.nsymbt + hdr.data_bytes
    if size < expected:
        raise InputError(
            f"{path}: truncated MRC file: the header describes {hdr.nx}x{hdr.ny}x{hdr.nz} voxels of mode "
            f"{hdr.mode} ({expected} bytes with headers), but the file has {size} bytes")


def _transpose(path: Path, hdr: MrcHeader, ndim: int) -> tuple[tuple[int, int, int] | None, list[str]]:
    """The axis permutation that turns the stored (sections, rows, columns) into (Z, Y, X).

    ``(mapc, mapr, maps)`` name the axis (1 = X, 2 = Y, 3 = Z) of the columns, rows and sections.
    The standard ``(1, 2, 3)`` needs none; another permutation is applied (3-D data only); values that
    are not a permutation of 1, 2, 3 are a damaged header, read as ``(1, 2, 3)`` with a note.
    """
    order = hdr.axis_order
    if order == (1, 2, 3):
        return None, []
    if sorted(order) != [1, 2, 3]:
        return None, [f"axis order (mapc, mapr, maps) = {order} is not a permutation of 1, 2, 3; "
                      "reading columns as x, rows as y, sections as z"]
    if ndim != 3:
        raise UnsupportedFormatError(
            f"{path}: MRC volume stack with axis order (mapc, mapr, maps) = {order} is not supported")
    stored = (order[2], order[1], order[0])  # axis letter of stored axes 0, 1, 2
    perm = (stored.index(3), stored.index(2), stored.index(1))
    logger.info("%s: MRC axis order (mapc, mapr, maps) = %s; transposing to (Z, Y, X)", path, order)
    return perm, []


def _check_mapping(path: Path, hdr: MrcHeader, data: np.memmap) -> None:
    """mrcfile must map the block the header describes (same offset, size and voxel width)."""
    expected_offset = HEADER_BYTES + hdr.nsymbt
    ok = (int(data.offset) == expected_offset and int(data.size) == hdr.nx * hdr.ny * hdr.nz
          and data.dtype.itemsize == hdr.itemsize)
    if not ok:
        raise InputError(
            f"{path}: inconsistent MRC header: it describes {hdr.nx}x{hdr.ny}x{hdr.nz} voxels of mode "
            f"{hdr.mode} at byte {expected_offset}, but mrcfile maps {data.shape} {data.dtype} at byte "
            f"{int(data.offset)}")


def _mrcfile_layout(path: Path, hdr: MrcHeader) -> tuple[RawLayout, tuple[float, float, float], list[str]]:
    """Open with mrcfile; return the data layout, the header voxel size in Å (z, y, x) and warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
        except Exception as err:  # mrcfile raises several types on a damaged header
            detail = " ".join(f"{type(err).__name__}: {err}".split())
            raise InputError(f"{path}: mrcfile cannot open the MRC file ({detail})") from err
        with mrc:
            data = mrc.data
            if data is None:
                detail = " ".join("; ".join(str(w.message) for w in caught).split())
                raise InputError(f"{path}: mrcfile could not map the MRC data block ({detail})")
            _check_mapping(path, hdr, data)
            h = mrc.header
            with np.errstate(all="ignore"):
                cell = np.array([h.cella.z, h.cella.y, h.cella.x], dtype=np.float64)
                grid = np.array([h.mz, h.my, h.mx], dtype=np.float64)
                az, ay, ax = (float(v) for v in cell / grid)
                angstrom = (az, ay, ax)
            dtype = np.dtype(np.uint8) if hdr.unsigned_bytes else data.dtype
            layout_dtype = dtype.newbyteorder(hdr.byteorder).str if dtype.itemsize > 1 else dtype.str
            perm, axis_notes = _transpose(path, hdr, data.ndim)
            stored = tuple(data.shape)
            shape = check_shape(path, stored if perm is None else tuple(stored[i] for i in perm))
            layout = RawLayout(int(data.offset), layout_dtype, stored, shape, transpose=perm)
    notes = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] + axis_notes
    return layout, angstrom, notes


def _voxel_size_nm(path: Path, angstrom: tuple[float, float, float],
                   notes: list[str]) -> tuple[float, float, float]:
    """Header voxel size in nm, or 1.0 nm with a :class:`HeaderWarning` when the header is damaged."""
    valid = all(np.isfinite(a) and a > 0 for a in angstrom)
    if not valid:
        notes = notes + [f"voxel size (z, y, x) = {angstrom} Å is not a positive finite number"]
    nm = tuple(a / 10.0 for a in angstrom) if valid else (1.0, 1.0, 1.0)
    if notes:
        action = ("a voxel size of 1.0 nm is assumed unless one is given (convert --voxel-size "
                  "Z,Y,X)" if not valid else f"using the header voxel size {nm} nm")
        msg = f"{path}: damaged MRC header ({'; '.join(dict.fromkeys(notes))}); {action}"
        logger.warning("%s", msg)
        warnings.warn(msg, HeaderWarning, stacklevel=4)
    return cast(tuple[float, float, float], nm)


def open_mrc(path: Path, head: bytes, size: int) -> Volume:
    """Open an MRC-family file as a :class:`Volume` (memory-mapped at its data offset).

    Parameters
    ----------
    path : Path
        The file.
    head : bytes
        Its first 1024 bytes.
    size : int
        Its size, bytes.
    """
    hdr = probe_mrc(head)
    if hdr is None:
        raise explain_not_mrc(path, head, size)
    _check_header(path, hdr, size)
    layout, angstrom, notes = _mrcfile_layout(path, hdr)
    check_dtype(path, np.dtype(layout.dtype))
    if hdr.unsigned_bytes:
        logger.info("%s: MRC mode 0 with the IMOD flag for unsigned bytes; reading uint8", path)
    voxel = _voxel_size_nm(path, angstrom, notes)
    assumed = not all(np.isfinite(a) and a > 0 for a in angstrom)  # _voxel_size_nm fell back to 1 nm
    # the damaged header's warning has said it already: the note is empty
    return Volume(path, layout, voxel, "mrc", voxel_size_assumed=assumed)
