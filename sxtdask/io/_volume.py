"""The lazily opened :class:`Volume` and the small, picklable layouts behind it.

A layout says *where* the voxels of a file are (an offset and a dtype for a raw block, or a list of
TIFF pages); a :class:`Volume` holds a path and a layout, opens the file on first use in each
process, and reads slabs of slices. Pickling a volume sends the path and the layout, never data, so
``dask.array.from_array(volume)`` runs on distributed workers without copying the tomogram.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np

from sxtdask.errors import InputError

__all__ = ["HeaderWarning", "Layout", "RawLayout", "TiffPagesLayout", "Volume"]

logger = logging.getLogger(__name__)

#: A byte order as NumPy dtypes spell it: little- or big-endian.
ByteOrder = Literal["<", ">"]


class HeaderWarning(UserWarning):
    """A file header is damaged or incomplete; a fallback value (such as a voxel size of 1 nm) is used."""


class Layout(Protocol):
    """Where a volume's voxels are in its file; must pickle cheaply."""

    shape: tuple[int, int, int]

    def open(self, path: Path) -> Any:
        """Return an object that supports basic ``[z0:z1, ...]`` slicing of the (Z, Y, X) data."""
        ...


@dataclass(frozen=True)
class RawLayout:
    """An uncompressed block of voxels at ``offset`` bytes (MRC, AmiraMesh, ``.npy``, plain TIFF).

    Parameters
    ----------
    offset : int
        Byte offset of the first voxel.
    dtype : str
        Numpy dtype string with its byte order as stored, e.g. ``"<f4"``.
    disk_shape : tuple of int
        Shape as stored (may include singleton axes that ``shape`` drops).
    shape : tuple of int
        (Z, Y, X) shape seen by readers.
    order : {"C", "F"}
        Memory order of the block.
    transpose : tuple of int, optional
        Axis permutation from ``disk_shape`` (3-D) to (Z, Y, X), for MRC files whose columns, rows
        and sections are not x, y and z; None when the stored axes are already (Z, Y, X).
    """

    offset: int
    dtype: str
    disk_shape: tuple[int, ...]
    shape: tuple[int, int, int]
    order: Literal["C", "F"] = "C"
    transpose: tuple[int, int, int] | None = None

    def open(self, path: Path) -> np.ndarray:
        """Memory-map the block read-only and return it as a (Z, Y, X) view."""
        mm = np.memmap(
            path, dtype=np.dtype(self.dtype), mode="r", offset=self.offset,
            shape=self.disk_shape, order=self.order,
        )
        if self.transpose is not None:
            return mm.transpose(self.transpose)
        return mm.reshape(self.shape, order="A")


@dataclass(frozen=True)
class TiffPagesLayout:
    """A TIFF whose slices are pages that cannot be memory-mapped (compressed, tiled, ...).

    Slice ``z`` is page ``z`` of series ``series`` (of the whole file when ``series`` is None, for
    writers that store each page as its own series); a slab read decodes only its own pages.
    """

    series: int | None
    shape: tuple[int, int, int]
    dtype: str

    def open(self, path: Path) -> _TiffPages:
        """Open the TIFF and return a sliceable reader of its pages."""
        return _TiffPages(path, self)


class _TiffPages:
    """Basic slicing over the pages of a TIFF series, decoding pages on demand."""

    def __init__(self, path: Path, layout: TiffPagesLayout) -> None:
        import tifffile

        self._path = path
        self._tif = tifffile.TiffFile(path)
        self._pages: Any = self._tif.pages if layout.series is None else self._tif.series[layout.series].pages
        self._layout = layout
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, self._tif.close)  # a dropped Volume closes its file

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _expand_key(key, 3)
        zsel = np.arange(self._layout.shape[0])[key[0]]
        zs = np.atleast_1d(zsel)
        out = np.empty((len(zs),) + self._layout.shape[1:], dtype=np.dtype(self._layout.dtype))
        with self._lock:  # a TiffFile shares one file handle
            for i, z in enumerate(zs):
                out[i] = self._page(int(z))
        out = out[(slice(None),) + key[1:]]
        return out[0] if np.ndim(zsel) == 0 else out

    def _page(self, z: int) -> np.ndarray:
        """Page ``z`` decoded as a (Y, X) array; InputError if its data cannot be decoded."""
        page = self._pages[z]
        assert page is not None  # TiffPagesLayout is made only for a series without gaps
        try:
            return np.asarray(page.asarray()).reshape(self._layout.shape[1:])
        except Exception as err:  # codecs raise many types on damaged data
            detail = " ".join(f"{type(err).__name__}: {err}".split())
            raise InputError(f"{self._path}: TIFF page {z} cannot be decoded ({detail})") from err

    def close(self) -> None:
        self._finalizer()


def _expand_key(key: Any, ndim: int) -> tuple[Any, ...]:
    """Turn an indexing key into a tuple of ``ndim`` entries (Ellipsis expanded)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = (slice(None),) * (ndim - len(key) + 1)
        key = key[:i] + fill + key[i + 1:]
    return key + (slice(None),) * (ndim - len(key))


class Volume:
    """A 3-D tomogram file opened lazily and read slab by slab.

    Create volumes with :func:`sxtdask.io.open_volume`, which validates the file. A volume holds only
    its path and layout; the file is (re)opened on first use in each process, so pickling is cheap
    and ``dask.array.from_array(volume, chunks=...)`` works on distributed workers.

    Attributes
    ----------
    path : Path
        The file.
    shape : tuple of int
        (Z, Y, X), voxels.
    dtype : numpy.dtype
        Data type of the voxels as stored (native byte order).
    voxel_size_nm : tuple of float
        (z, y, x) voxel size, nanometres.
    format : str
        ``"mrc"``, ``"amira"``, ``"tiff"`` or ``"npy"``.
    voxel_size_assumed : bool
        The file carries no (valid) voxel size: ``voxel_size_nm`` is the assumed 1 nm, and physical
        sizes computed from it mean nothing until the real size is given.
    voxel_size_note : str
        Why it is assumed (empty when it is not, or when a header warning has said so).
    materials : dict of int to str
        A label file's class names by value (AmiraMesh ``Materials``, e.g. ``{0: "void", 1:
        "cell", 2: "ignore"}``); empty when the file names none.
    """

    ndim = 3

    def __init__(
        self, path: Path, layout: RawLayout | TiffPagesLayout, voxel_size_nm: tuple[float, float, float],
        fmt: str, *, voxel_size_assumed: bool = False, voxel_size_note: str = "",
        materials: dict[int, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.layout = layout
        self.shape = cast(tuple[int, int, int], tuple(int(n) for n in layout.shape))
        self.dtype = np.dtype(layout.dtype).newbyteorder("=")
        vs = tuple(float(v) for v in voxel_size_nm)
        self.voxel_size_nm = cast(tuple[float, float, float], vs)
        self.format = fmt
        self.voxel_size_assumed = bool(voxel_size_assumed)
        self.voxel_size_note = voxel_size_note  # why it is assumed ("" once said or not assumed)
        self.materials = dict(materials or {})
        self._data: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Volume({str(self.path)!r}, format={self.format!r}, shape={self.shape}, "
                f"dtype={self.dtype}, voxel_size_nm={self.voxel_size_nm})")

    @property
    def nbytes(self) -> int:
        """Size of the whole volume in memory, bytes."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def _array(self) -> Any:
        if self._data is None:
            with self._lock:
                if self._data is None:
                    self._data = self.layout.open(self.path)
        return self._data

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Read slices ``z0 <= z < z1``.

        Returns
        -------
        slab : (z1 - z0, Y, X) ndarray
            A copy in memory, dtype :attr:`dtype`.
        """
        if not 0 <= z0 <= z1 <= self.shape[0]:
            raise IndexError(f"{self.path}: slab [{z0}, {z1}) is outside 0..{self.shape[0]} along z")
        return np.array(self._array()[z0:z1], dtype=self.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Basic slicing, e.g. ``volume[10:20, :, 5:50]``; returns an in-memory copy."""
        return np.array(self._array()[key], dtype=self.dtype)

    def close(self) -> None:
        """Release the file (a later read reopens it)."""
        data, self._data = self._data, None
        if isinstance(data, _TiffPages):
            data.close()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_data"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        st = os.stat(self.path)
        return ("sxtdask.io.Volume", str(self.path.resolve()), st.st_size, st.st_mtime_ns, self.layout)
