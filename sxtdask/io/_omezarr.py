"""Write and read OME-Zarr 0.5 images (Zarr v3) with a 2x multiscale pyramid.

:func:`write_image` streams a volume slab by slab (one chunk depth at a time) into a temporary
sibling directory and renames it into place only when every level and the metadata are written, so
an interrupted run never leaves an output that looks complete. Image levels are written with every
chunk (even all-zero ones) and a Zstandard content checksum.

Reading is strict: :func:`open_image` validates the metadata at every level and opens the level
arrays by the paths the metadata give, and refuses a level 0 with missing chunks
(:func:`check_chunks_present`); :func:`read_block` reads a block refusing missing and undecodable
chunks. Every refusal is one :class:`~sxtdask.errors.InputError` line naming the image and the field,
level or chunk. Label images keep Zarr's rule that an absent chunk is 0.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from sxtdask._fs import atomic_directory as _atomic_directory
from sxtdask.errors import OVERWRITE, ConfigError, InputError, InvalidVolumeError
from sxtdask.io._checks import ASSUMED_VOXEL_NM, check_dtype, check_shape, check_voxel_size
from sxtdask.io._volume import Volume

__all__ = [
    "AXES", "MAX_EXTRA_LEVELS", "MIN_LEVEL_SIZE", "OmeImage", "atomic_directory", "check_chunks_present",
    "level_chunks", "member", "multiscale_metadata", "normalize_chunks", "open_image", "open_level_array",
    "open_root", "pyramid_shapes", "read_block", "voxel_size_is_assumed", "write_image", "write_pyramid",
]

logger = logging.getLogger(__name__)

OME_VERSION = "0.5"
#: The key of sxtdask's own attributes beside ``ome`` (e.g. ``{"voxel_size": "assumed"}``).
SXTDASK_ATTRS = "sxtdask"
AXES = ("z", "y", "x")
MIN_LEVEL_SIZE = 32
MAX_EXTRA_LEVELS = 4
DEFAULT_CHUNK_DEPTH = 32
Shape3 = tuple[int, int, int]
Progress = Callable[[int, int], None]
#: OME-Zarr (UDUNITS-2) length units sxtdask reads, in nanometres.
_UNITS_NM = {"angstrom": 0.1, "picometer": 1e-3, "nanometer": 1.0, "micrometer": 1e3, "millimeter": 1e6,
             "centimeter": 1e7, "meter": 1e9}


# --- geometry -------------------------------------------------------------------------------------

def pyramid_shapes(shape: Shape3) -> list[Shape3]:
    """Shapes of the pyramid levels: halve (rounding up) while the smallest axis stays >= 32 voxels.

    At most :data:`MAX_EXTRA_LEVELS` levels are added below level 0.
    """
    shapes = [tuple(int(n) for n in shape)]
    while len(shapes) <= MAX_EXTRA_LEVELS:
        nxt = tuple((n + 1) // 2 for n in shapes[-1])
        if min(nxt) < MIN_LEVEL_SIZE:
            break
        shapes.append(nxt)
    return cast(list[Shape3], shapes)  # tuples of len(shape) == 3 values


def normalize_chunks(chunks: Sequence[Any] | None, shape: Shape3) -> Shape3:
    """Validate chunk sizes and clip them to ``shape``; default ``(min(32, Z), Y, X)`` (slice stacks)."""
    if chunks is None:
        return (min(DEFAULT_CHUNK_DEPTH, shape[0]), shape[1], shape[2])
    chunks = tuple(chunks)
    ok = len(chunks) == 3 and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool)
                                  for c in chunks)
    if not ok:
        raise ConfigError(f"chunks {chunks!r} must be three integers (cz, cy, cx)")
    if min(chunks) <= 0:
        raise ConfigError(f"chunks {tuple(chunks)} must be positive along z, y and x")
    return level_chunks(chunks, shape)


def level_chunks(chunks: Sequence[int], shape: Sequence[int]) -> Shape3:
    """``chunks`` clipped to ``shape``."""
    return cast(Shape3, tuple(int(min(c, n)) for c, n in zip(chunks, shape, strict=True)))


_METHODS = {"mean": "2x2x2 local mean", "nearest": "stride-2 subsampling (nearest neighbour)"}


def multiscale_metadata(
    name: str | None, voxel_size_nm: tuple[float, float, float], levels: int, method: str,
) -> dict[str, Any]:
    """One OME-Zarr 0.5 ``multiscales`` entry: axes z, y, x in nanometres and a x2 scale per level."""
    entry: dict[str, Any] = {}
    if name is not None:
        entry["name"] = name
    entry["axes"] = [{"name": a, "type": "space", "unit": "nanometer"} for a in AXES]
    entry["datasets"] = [
        {"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [float(v) * 2**k for v in voxel_size_nm]}]}
        for k in range(levels)
    ]
    entry["type"] = method
    entry["metadata"] = {"method": _METHODS[method], "software": "sxtdask"}
    return entry


# --- atomic output --------------------------------------------------------------------------------

_EXISTS = "{subject}: exists; pass " + OVERWRITE + " to replace it"


def atomic_directory(out: Path, overwrite: bool) -> AbstractContextManager[Path]:
    """Yield a temporary sibling directory; rename it to ``out`` on success, delete it on any error.

    :func:`sxtdask._fs.atomic_directory` with this module's message for an existing ``out``; ``out``
    is checked (:func:`sxtdask._fs.check_new_path`) before anything is read or written.
    """
    return _atomic_directory(out, overwrite, exists=_EXISTS)


# --- writing --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Source:
    """What write_image streams from: a Volume, or an in-memory / lazy array."""

    label: str
    shape: Shape3
    dtype: np.dtype
    read: Callable[[int, int], np.ndarray]
    name: str | None


def _as_source(volume: Any) -> _Source:
    if isinstance(volume, Volume):
        return _Source(str(volume.path), volume.shape, volume.dtype, volume.read, volume.path.stem)
    if not all(hasattr(volume, a) for a in ("shape", "dtype", "__getitem__")):
        raise ConfigError(f"write_image needs a Volume or an array, not {type(volume).__name__}")
    label = f"array of shape {tuple(volume.shape)}"
    check_dtype(label, volume.dtype)
    shape = check_shape(label, tuple(volume.shape))
    arr = volume.reshape(shape) if tuple(volume.shape) != shape else volume

    def read(z0: int, z1: int) -> np.ndarray:
        return np.asarray(arr[z0:z1])

    return _Source(label, shape, np.dtype(volume.dtype), read, None)


def _check_finite(label: str, slab: np.ndarray, z0: int) -> None:
    """Raise InvalidVolumeError naming the first slice with NaN or Inf voxels."""
    if slab.dtype.kind != "f":
        return
    finite = np.isfinite(slab).reshape(slab.shape[0], -1).all(axis=1)
    if finite.all():
        return
    z = int(np.argmin(finite))
    kind = "NaN" if np.isnan(slab[z]).any() else "infinite"
    raise InvalidVolumeError(
        f"{label}: {kind} voxel values at slice z={z0 + z}; a tomogram must be finite "
        "(fix or mask the input)")


def _pad_even(block: np.ndarray) -> np.ndarray:
    pad = [(0, n % 2) for n in block.shape]
    return np.pad(block, pad, mode="edge") if any(p for _, p in pad) else block


def _mean2(block: np.ndarray) -> np.ndarray:
    """2x2x2 local mean of a (Z, Y, X) block; odd edges are padded by repetition (mean of what exists).

    Works one output plane at a time so the float64 temporaries stay two input planes small.
    """
    z, y, x = block.shape
    out = np.empty(((z + 1) // 2, (y + 1) // 2, (x + 1) // 2), dtype=block.dtype)
    for i in range(out.shape[0]):
        pair = _pad_even(block[2 * i: 2 * i + 2])
        mean = pair.reshape(2, out.shape[1], 2, out.shape[2], 2).mean(axis=(0, 2, 4), dtype=np.float64)
        out[i] = np.rint(mean) if block.dtype.kind in "iu" else mean
    return out


def _subsample2(block: np.ndarray) -> np.ndarray:
    """Nearest-neighbour 2x downsampling (stride-2 subsampling), for labels."""
    return np.ascontiguousarray(block[::2, ::2, ::2])


REDUCERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"mean": _mean2, "nearest": _subsample2}


def bin_mean(block: np.ndarray, factor: int) -> np.ndarray:
    """The ``factor``×``factor``×``factor`` mean of a (Z, Y, X) block, the last bins of odd
    sizes averaging what exists; for powers of 2, exactly the values of a ``mean`` pyramid's
    levels (repeated :func:`_mean2`), so a level can stand in for a binning.
    """
    if factor < 1:
        raise ValueError(f"binning factor {factor} must be at least 1")
    out = np.asarray(block)
    if factor & (factor - 1) == 0:
        while factor > 1:
            out, factor = _mean2(out), factor // 2
        return out
    pad = [(0, -n % factor) for n in out.shape]
    padded = np.pad(out.astype(np.float64), pad)  # zeros, not counted below
    z, y, x = (n // factor for n in padded.shape)
    total = padded.reshape(z, factor, y, factor, x, factor).sum(axis=(1, 3, 5))
    counts = [np.minimum(factor, n - factor * np.arange(m)) for n, m in zip(out.shape, (z, y, x),
                                                                          strict=True)]
    mean = total / (counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :])
    return (np.rint(mean) if out.dtype.kind in "iu" else mean).astype(out.dtype)


def create_level(group: zarr.Group, k: int, shape: tuple[int, ...], chunks: tuple[int, ...],
                 dtype: Any, *, write_empty_chunks: bool = False) -> zarr.Array:
    """Create (replacing any) array ``str(k)`` of ``group`` with z, y, x dimension names.

    Chunks are Zstandard-compressed with a content checksum, so a damaged chunk fails to decode
    instead of reading as other numbers. Image levels pass ``write_empty_chunks=True``: the returned
    array writes every chunk, even one that is all fill value, so that a missing chunk always means a
    damaged store (:func:`check_chunks_present`). Label images leave it False (absent means 0).
    """
    return group.create_array(
        str(k), shape=shape, chunks=level_chunks(chunks, shape), dtype=dtype, fill_value=0,
        dimension_names=AXES, overwrite=True, compressors=ZstdCodec(level=0, checksum=True),
        config={"write_empty_chunks": write_empty_chunks},
    )


def _slabs(n: int, depth: int) -> Iterator[tuple[int, int]]:
    for z0 in range(0, n, depth):
        yield z0, min(z0 + depth, n)


def _write_level0(src: _Source, arr: zarr.Array, tick: Callable[[], None]) -> None:
    for z0, z1 in _slabs(src.shape[0], arr.chunks[0]):
        slab = src.read(z0, z1)
        _check_finite(src.label, slab, z0)
        arr[z0:z1] = slab.astype(arr.dtype, copy=False)
        tick()


def write_pyramid(
    group: zarr.Group, shapes: Sequence[tuple[int, ...]], chunks: tuple[int, ...], method: str,
    tick: Callable[[], None], *, write_empty_chunks: bool = False,
) -> None:
    """Write levels ``1..len(shapes)-1`` of ``group``, each slab by slab from the level above it.

    ``write_empty_chunks`` as for :func:`create_level` (True for image levels).
    """
    reduce = REDUCERS[method]
    prev = array_at(group, "0")
    for k, shape in enumerate(shapes[1:], start=1):
        arr = create_level(group, k, shape, chunks, prev.dtype, write_empty_chunks=write_empty_chunks)
        for z0, z1 in _slabs(shape[0], arr.chunks[0]):
            arr[z0:z1] = _reduce_slab(prev, z0, z1, reduce)
            tick()
        prev = arr


def _reduce_slab(prev: zarr.Array, z0: int, z1: int,
                 reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Slices ``z0:z1`` of the next level, from slices ``2*z0:2*z1`` of ``prev`` read about one chunk
    at a time.

    Pieces have an even depth, so no 2x2x2 block is split between two reads.
    """
    step = max(2, prev.chunks[0] - prev.chunks[0] % 2)
    lo, hi = 2 * z0, min(2 * z1, prev.shape[0])
    parts = [reduce(cast(np.ndarray, prev[a: min(a + step, hi)])) for a in range(lo, hi, step)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def count_slabs(shapes: Sequence[tuple[int, ...]], chunks: tuple[int, ...]) -> int:
    """Number of slabs written for a pyramid (one per chunk depth per level)."""
    return sum(-(-s[0] // level_chunks(chunks, s)[0]) for s in shapes)


def _counter(total: int, progress: Progress | None) -> Callable[[], None]:
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return tick


def write_image(
    volume: Volume | np.ndarray | da.Array | zarr.Array, out: str | os.PathLike[str], *,
    chunks: tuple[int, int, int] | None = None,
    voxel_size_nm: tuple[float, float, float] | None = None, overwrite: bool = False,
    name: str | None = None, progress: Progress | None = None, voxel_size_assumed: bool = False,
    acquisition: Mapping[str, Any] | None = None,
) -> Path:
    """Stream a tomogram into an OME-Zarr 0.5 image with a 2x mean pyramid.

    Parameters
    ----------
    volume : Volume or (Z, Y, X) array
        Source; a :class:`Volume` is read slab by slab, an array (NumPy, Dask, Zarr) sliced by slab.
    out : str or Path
        The ``.ome.zarr`` directory to create.
    chunks : (cz, cy, cx), optional
        Chunk shape of level 0, voxels; clipped to the shape. Default ``(min(32, Z), Y, X)``.
    voxel_size_nm : (z, y, x), optional
        Voxel size in nanometres; default the volume's. An array without one, or a file that
        carries none, gets 1 nm, marked *assumed* in the store (``OmeImage.voxel_size_assumed``)
        with a warning in the log.
    overwrite : bool
        Replace an existing ``out`` (removed only once the new image is complete).
    name : str, optional
        Multiscale name; default the source file's stem.
    progress : callable, optional
        Called as ``progress(done_slabs, total_slabs)`` after each slab of every level.
    voxel_size_assumed : bool
        Mark the given ``voxel_size_nm`` as assumed (copying an image whose size was).
    acquisition : mapping, optional
        How the image was made (JSON values: mount, tilt range, dose, reconstruction...), stored
        as ``{"sxtdask": {"acquisition": ...}}`` in the image's attributes.

    Returns
    -------
    Path
        ``out``. Level 0 keeps the source dtype (float16 becomes float32). Peak memory is a few slabs.

    Raises
    ------
    OutputError
        ``out`` exists without ``overwrite``, or its parent is missing or not writable.
    InvalidVolumeError
        NaN or Inf voxels (the first slice is named); nothing is left at ``out``.
    ConfigError
        Non-positive chunks or voxel sizes.
    """
    out = Path(out)
    src = _as_source(volume)
    if voxel_size_nm is not None:
        vs, assumed = check_voxel_size(voxel_size_nm), bool(voxel_size_assumed)
    elif isinstance(volume, Volume):
        vs, assumed = volume.voxel_size_nm, volume.voxel_size_assumed
    else:
        vs, assumed = ASSUMED_VOXEL_NM, True
    chunks = normalize_chunks(chunks, src.shape)
    dtype = np.dtype(np.float32) if src.dtype == np.float16 else src.dtype
    shapes = pyramid_shapes(src.shape)
    tick = _counter(count_slabs(shapes, chunks), progress)
    with atomic_directory(out, overwrite) as partial:
        root = zarr.open_group(partial, mode="w", zarr_format=3)
        level0 = create_level(root, 0, src.shape, chunks, dtype, write_empty_chunks=True)
        _write_level0(src, level0, tick)
        write_pyramid(root, shapes, chunks, "mean", tick, write_empty_chunks=True)
        ms = multiscale_metadata(name or src.name, vs, len(shapes), "mean")
        root.attrs.update({"ome": {"version": OME_VERSION, "multiscales": [ms]},
                           SXTDASK_ATTRS: {"voxel_size": "assumed" if assumed else "known",
                                           **({"acquisition": dict(acquisition)}
                                              if acquisition is not None else {})}})
    logger.info("%s: wrote OME-Zarr image %s %s, chunks %s, %d levels", out, src.shape, dtype, chunks,
                len(shapes))
    if voxel_size_nm is None:
        _warn_assumed(out, volume)
    return out


def _warn_assumed(out: Path, volume: Any) -> None:
    """One warning for an image written with an assumed voxel size (once it exists: a failed
    conversion says only why it failed). A damaged MRC header has said it already.
    """
    if not isinstance(volume, Volume):
        why = "none was given for the array"
    elif volume.voxel_size_assumed and volume.voxel_size_note:
        why = volume.voxel_size_note
    else:
        return
    logger.warning("%s: no voxel size (%s); assuming 1 nm, so physical sizes are not real (give "
                   "the real one with --voxel-size Z,Y,X, or voxel_size_nm= in Python)", out, why)


# --- reading --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OmeImage:
    """An OME-Zarr 0.5 image opened lazily.

    Attributes
    ----------
    path : Path
        The image root.
    data : (Z, Y, X) dask.array.Array
        Level 0, chunked like the Zarr array.
    voxel_size_nm : tuple of float
        (z, y, x) voxel size of level 0, nanometres.
    levels : int
        Number of pyramid levels.
    name : str or None
        Multiscale name.
    level_paths : tuple of str
        Zarr paths of the levels, finest first, as the metadata names them.
    voxel_size_assumed : bool
        The source carried no voxel size: ``voxel_size_nm`` is an assumed 1 nm and physical sizes
        (µm³, nm) computed from it are not real. Stored as ``{"sxtdask": {"voxel_size":
        "assumed"}}`` in the image's attributes.
    downsampling : str or None
        The multiscale ``type`` (``"mean"``: each level the 2×2×2 mean of the one above, as
        ``sxtdask convert`` writes it), or None where the metadata do not say.
    """

    path: Path
    data: da.Array
    voxel_size_nm: tuple[float, float, float]
    levels: int
    name: str | None
    level_paths: tuple[str, ...] = ()
    voxel_size_assumed: bool = False
    downsampling: str | None = None

    def mean_levels(self) -> dict[int, da.Array]:
        """{binning factor: level} of the levels that are exact 2×2×2 means of level 0, as
        :func:`bin_mean` computes them (a ``mean`` pyramid of a floating-point image; integer
        images are rounded there): ``{2: level 1, 4: level 2, ...}``, empty where none is.
        """
        if self.downsampling != "mean" or self.data.dtype.kind != "f":
            return {}
        out = {}
        for k in range(1, self.levels):
            level = self.strict(k)
            want = tuple(-(-n // 2**k) for n in self.data.shape)
            if tuple(level.shape) != want or level.dtype != self.data.dtype:
                break
            out[2**k] = level
        return out

    def array_path(self, k: int = 0) -> Path:
        """Absolute path of the Zarr array of pyramid level ``k`` (its path from the metadata).

        Open it with :func:`zarr.open_array` or read blocks of it with :func:`read_block`.
        """
        if not 0 <= k < self.levels:
            raise ConfigError(f"{self.path}: level {k} does not exist (levels 0..{self.levels - 1})")
        key = self.level_paths[k] if self.level_paths else str(k)
        return (self.path / key).absolute()

    @property
    def level0_path(self) -> Path:
        """Absolute path of the level-0 (full resolution) Zarr array."""
        return self.array_path(0)

    def strict(self, k: int = 0) -> da.Array:
        """Pyramid level ``k`` as a Dask array whose every chunk is read through
        :func:`read_block`: a chunk that is missing or cannot be decoded raises one
        :class:`~sxtdask.errors.InputError` naming it, on whichever worker reads it (``data``
        reads through Zarr, which gives the fill value or a codec's own error).
        """
        path = str(self.array_path(k))
        arr = open_level_array(self.path, self.level_paths[k] if self.level_paths else str(k), k)
        source = _StrictSource(path, tuple(arr.shape), np.dtype(arr.dtype))
        name = f"image-{tokenize(path, source.shape, str(source.dtype), arr.chunks)}"
        return da.from_array(source, chunks=arr.chunks, name=name, asarray=False, fancy=False,
                             meta=np.empty((0,) * arr.ndim, arr.dtype))

    def level(self, k: int) -> da.Array:
        """Pyramid level ``k`` (0 is full resolution) as a (Z, Y, X) Dask array.

        Raises
        ------
        InputError
            The level's array cannot be opened or has missing chunks.
        """
        self.array_path(k)  # checks k
        key = self.level_paths[k] if self.level_paths else str(k)
        arr = open_level_array(self.path, key, k)
        check_chunks_present(arr, where=str(self.path), what=f"level {k}")
        return da.from_zarr(arr)


def open_root(path: str | os.PathLike[str], mode: Literal["r", "r+"] = "r") -> zarr.Group:
    """Open the root group of a local OME-Zarr 0.5 image; InputError naming the path if it is not one."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such OME-Zarr image")
    if not (p / "zarr.json").is_file():
        if (p / ".zattrs").exists() or (p / ".zgroup").exists():
            raise InputError(f"{p}: Zarr v2 (OME-Zarr 0.4 or older); sxtdask reads OME-Zarr 0.5 (Zarr v3)")
        raise InputError(f"{p}: not an OME-Zarr 0.5 image (no zarr.json)")
    try:
        return zarr.open_group(p, mode=mode, zarr_format=3)
    except Exception as err:  # zarr raises several types for a bad zarr.json
        raise InputError(f"{p}: not an OME-Zarr 0.5 image ({_one_line(err)})") from err


def group_at(parent: zarr.Group, *keys: str) -> zarr.Group:
    """``parent[keys[0]][keys[1]]...``: the sub-group the OME-Zarr layout has there.

    Zarr types every member as ``Array | Group``; this names the one the layout puts at that path
    (it checks nothing: a missing member raises ``KeyError`` as ``parent[key]`` does).
    """
    node: Any = parent
    for key in keys:
        node = node[key]
    return cast(zarr.Group, node)


def array_at(parent: zarr.Group, *keys: str) -> zarr.Array:
    """``parent[keys[0]][keys[1]]...``: the array the OME-Zarr layout has there (see :func:`group_at`)."""
    node: Any = parent
    for key in keys:
        node = node[key]
    return cast(zarr.Array, node)


def member(parent: zarr.Group, key: str, where: str | os.PathLike[str]) -> zarr.Array | zarr.Group | None:
    """``parent[key]``, None if there is no such member; InputError if its zarr.json is unreadable."""
    try:
        return parent[key]
    except KeyError:
        return None
    except Exception as err:  # zarr raises many types for a bad zarr.json
        raise InputError(f"{where}: {key} cannot be opened ({_one_line(err)})") from err


def _one_line(err: object, limit: int = 300) -> str:
    """An exception (with its type) or a message, as one line of at most ``limit`` characters."""
    text = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else str(err)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bad(path: Path, where: str, what: str) -> InputError:
    return InputError(f"{path}: malformed OME-Zarr metadata: {where} {what}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _dataset_path(path: Path, i: int, dataset: Any) -> str:
    """The validated ``path`` of ``datasets[i]``: a relative Zarr path inside the image."""
    where = f"multiscales[0].datasets[{i}]"
    if not isinstance(dataset, dict):
        raise _bad(path, where, f"is {type(dataset).__name__}, not an object")
    key = dataset.get("path")
    if not isinstance(key, str):
        raise _bad(path, f"{where}.path", f"is {key!r}, not a string")
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(q in ("", ".", "..") for q in parts):
        raise _bad(path, f"{where}.path", f"{key[:80]!r} is not a relative path inside the image")
    return key


def _unit_nm(path: Path, axes: list[Any]) -> tuple[float, float, float]:
    """Length of each axis' unit (z, y, x) in nanometres; a missing unit is read as nanometre."""
    factors = []
    for i, axis in enumerate(axes):
        unit = axis.get("unit")
        if unit is None:
            factors.append(1.0)
        elif isinstance(unit, str) and unit in _UNITS_NM:
            factors.append(_UNITS_NM[unit])
        else:
            raise InputError(f"{path}: axis {axis.get('name')!r} has unit {unit!r}; sxtdask reads "
                             f"{', '.join(_UNITS_NM)} (multiscales[0].axes[{i}])")
    if any(a.get("unit") is None for a in axes):
        logger.info("%s: OME-Zarr axes without a unit; reading the scale as nanometres", path)
    return cast(tuple[float, float, float], tuple(factors))


def _axes(path: Path, entry: dict[str, Any]) -> tuple[float, float, float]:
    """Validate ``axes`` (z, y, x, type space); return the unit of each in nanometres."""
    axes = entry.get("axes")
    if not isinstance(axes, list) or not all(isinstance(a, dict) for a in axes):
        raise _bad(path, "multiscales[0].axes", "is not a list of objects")
    names = tuple(a.get("name") for a in axes)
    if names != AXES:
        raise InputError(f"{path}: image axes {names}; sxtdask needs ('z', 'y', 'x')")
    for i, a in enumerate(axes):
        if a.get("type", "space") != "space":
            raise InputError(f"{path}: axis {a['name']!r} has type {a.get('type')!r}; sxtdask needs "
                             f"space axes (multiscales[0].axes[{i}])")
    return _unit_nm(path, axes)


def read_multiscale(path: Path, attrs: dict[str, Any]) -> dict[str, Any]:
    """The single validated ``multiscales`` entry of OME-Zarr 0.5 attributes.

    Checks the structure the readers rely on (lists, objects, dataset paths, axes, every
    dataset's scale); an InputError names the first malformed field.
    """
    ome = attrs.get("ome") if isinstance(attrs, dict) else None
    if not isinstance(ome, dict) or ome.get("version") != OME_VERSION:
        found = ome.get("version") if isinstance(ome, dict) else None
        raise InputError(f"{path}: not an OME-Zarr 0.5 image (ome version {found!r})")
    ms = ome.get("multiscales")
    if ms is None or ms == []:
        raise InputError(f"{path}: OME-Zarr group without 'multiscales' datasets (not an image)")
    if not isinstance(ms, list):
        raise _bad(path, "multiscales", f"is {type(ms).__name__}, not a list")
    entry = ms[0]
    if not isinstance(entry, dict):
        raise _bad(path, "multiscales[0]", f"is {type(entry).__name__}, not an object")
    datasets = entry.get("datasets")
    if datasets is None or datasets == []:
        raise InputError(f"{path}: OME-Zarr group without 'multiscales' datasets (not an image)")
    if not isinstance(datasets, list):
        raise _bad(path, "multiscales[0].datasets", f"is {type(datasets).__name__}, not a list")
    keys = [_dataset_path(path, i, d) for i, d in enumerate(datasets)]
    if len(set(keys)) != len(keys):
        raise _bad(path, "multiscales[0].datasets", f"name a level path twice ({keys})")
    name = entry.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad(path, "multiscales[0].name", f"is {name!r}, not a string")
    units = _axes(path, entry)
    overall = _transform_scale(path, entry, "multiscales[0]", required=False)
    for i, d in enumerate(datasets):
        scale = _transform_scale(path, d, f"multiscales[0].datasets[{i}]", required=True)
        _physical(path, scale, overall, units, i)
    return entry


def _check_vector(path: Path, where: str, values: Any, positive: bool) -> tuple[float, float, float]:
    rule = "positive finite numbers" if positive else "finite numbers"
    if not isinstance(values, list) or len(values) != 3 or not all(_is_number(v) for v in values):
        raise _bad(path, where, f"{_short(values)} is not a list of three {rule} (z, y, x)")
    out = tuple(float(v) for v in values)
    if not all(np.isfinite(v) and (v > 0 or not positive) for v in out):
        raise _bad(path, where, f"{_short(values)} is not a list of three {rule} (z, y, x)")
    return cast(tuple[float, float, float], out)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def _transform_scale(path: Path, node: dict[str, Any], where: str,
                     required: bool) -> tuple[float, float, float] | None:
    """The scale of ``node['coordinateTransformations']``: one scale, then an optional translation."""
    where = f"{where}.coordinateTransformations"
    ts = node.get("coordinateTransformations")
    if ts is None and not required:
        return None
    if not isinstance(ts, list) or not all(isinstance(t, dict) for t in ts):
        raise _bad(path, where, "is not a list of objects")
    types = [t.get("type") for t in ts]
    if types not in (["scale"], ["scale", "translation"]):
        raise _bad(path, where, f"has types {_short(types)}; OME-Zarr 0.5 needs one scale, "
                   "optionally followed by one translation")
    if len(ts) == 2:
        _check_vector(path, f"{where}[1].translation", ts[1].get("translation"), positive=False)
    return _check_vector(path, f"{where}[0].scale", ts[0].get("scale"), positive=True)


def _physical(path: Path, scale: tuple[float, float, float] | None,
              overall: tuple[float, float, float] | None, units: tuple[float, float, float],
              i: int) -> tuple[float, float, float]:
    """Voxel size in nanometres of dataset ``i``: its scale times the multiscale's, in nanometres."""
    assert scale is not None  # datasets require a scale
    g = overall or (1.0, 1.0, 1.0)
    nm = tuple(s * o * u for s, o, u in zip(scale, g, units, strict=True))  # floats: overflow gives inf
    if not all(np.isfinite(v) and v > 0 for v in nm):
        raise _bad(path, f"multiscales[0].datasets[{i}]", f"scale gives a voxel size of {nm} nm")
    return cast(tuple[float, float, float], nm)


def voxel_size_of(path: Path, entry: dict[str, Any], k: int = 0) -> tuple[float, float, float]:
    """Voxel size in nanometres of level ``k`` of a multiscale entry checked by :func:`read_multiscale`."""
    units = _axes(path, entry)
    overall = _transform_scale(path, entry, "multiscales[0]", required=False)
    scale = _transform_scale(path, entry["datasets"][k], f"multiscales[0].datasets[{k}]", required=True)
    return _physical(path, scale, overall, units, k)


def open_level_array(path: Path, key: str, k: int) -> zarr.Array:
    """The Zarr array of level ``k`` at ``key`` (from the metadata) under ``path``; InputError if not one."""
    where = f"{path}: level {k} ({key!r})"
    if not (path / key / "zarr.json").is_file():
        raise InputError(f"{where} listed in the metadata is missing")
    try:
        node = zarr.open(store=str(path / key), mode="r", zarr_format=3)
    except Exception as err:  # zarr raises many types for a bad zarr.json
        raise InputError(f"{where} cannot be opened ({_one_line(err)})") from err
    if not isinstance(node, zarr.Array):
        raise InputError(f"{where} is a group, not an array")
    return node


def _check_level(path: Path, key: str, k: int, arr: zarr.Array, above: tuple[int, ...] | None) -> None:
    """Level ``k`` must be a 3-D numeric array; below level 0 each axis keeps or halves the one above."""
    where = f"{path}: level {k} ({key!r})"
    if arr.ndim != 3:
        raise InputError(f"{where} is {arr.ndim}-D (shape {arr.shape}); an image level must be 3-D (z, y, x)")
    check_dtype(f"{where}", arr.dtype)
    shape = tuple(int(n) for n in arr.shape)
    if above is None:
        check_shape(f"{where}", shape)
        return
    ok = all(n >= 1 and n in (m, (m + 1) // 2, m // 2) for n, m in zip(shape, above, strict=True))
    if not ok:
        raise InputError(f"{where} has shape {shape}, which does not halve level {k - 1}'s {above} "
                         "(each axis keeps its size or halves it)")


def _storage_grid(arr: zarr.Array) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The stored objects' grid shape and their shape (shards if the array is sharded, else chunks)."""
    block = tuple(int(c) for c in (arr.shards or arr.chunks))
    return tuple(-(-int(n) // c) for n, c in zip(arr.shape, block, strict=True)), block


def _array_dir(arr: zarr.Array) -> Path | None:
    """The local directory of ``arr``, or None if it is not in a local store."""
    store = arr.store_path.store
    if not isinstance(store, LocalStore):
        return None
    return Path(store.root) / arr.store_path.path


def _stored_keys(base: Path) -> set[str]:
    """Every file under ``base`` as a store key relative to it (``c/0/1/2``)."""
    keys: set[str] = set()
    for dirpath, _dirs, files in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        keys.update(prefix + f for f in files)
    return keys


def check_chunks_present(array: zarr.Array | str | os.PathLike[str], *, where: str | None = None,
                         what: str = "the array") -> None:
    """Raise InputError unless every chunk (every shard, for a sharded array) of ``array`` is stored.

    sxtdask writes every chunk of an image, so a missing one means a damaged store, not zeros. The
    check lists the store once (one directory walk for a local store).

    Parameters
    ----------
    array : zarr.Array or str or Path
        The array, or the path of a local Zarr array.
    where : str, optional
        Start of the message (default: the array's path).
    what : str
        What the array is, for the message, e.g. ``"level 0"``.

    Raises
    ------
    InputError
        ``"<where>: N of M chunks of <what> are missing (e.g. chunk (z, y, x) = (i, j, k)); the store
        is damaged"``.
    """
    arr = _as_array(array)
    base = _array_dir(arr)
    label = where if where is not None else str(base if base is not None else arr.store_path)
    grid, _ = _storage_grid(arr)
    total = math.prod(grid)
    if base is None:  # another store: count only
        missing_n = int(arr.nchunks) - int(arr.nchunks_initialized)
        if missing_n > 0:
            raise InputError(f"{label}: {missing_n} of {arr.nchunks} chunks of {what} are missing; "
                             "the store is damaged")
        return
    stored = _stored_keys(base)
    encode = arr.metadata.encode_chunk_key
    missing = [c for c in itertools.product(*(range(n) for n in grid)) if encode(c) not in stored]
    if missing:
        raise InputError(f"{label}: {len(missing)} of {total} chunks of {what} are missing (e.g. chunk "
                         f"{_grid_name(arr)} = {missing[0]}); the store is damaged, or was written by "
                         "a tool that skips empty chunks: convert the tomogram again")


def _as_array(array: zarr.Array | str | os.PathLike[str]) -> zarr.Array:
    """``array`` itself, or the local Zarr array at that path (InputError if there is none)."""
    if isinstance(array, zarr.Array):
        return array
    try:
        node = zarr.open(store=str(array), mode="r")
    except Exception as err:  # zarr raises many types for a bad zarr.json
        raise InputError(f"{array}: cannot open the Zarr array ({_one_line(err)})") from err
    if not isinstance(node, zarr.Array):
        raise InputError(f"{array}: is a Zarr group, not an array")
    return node


def _box_chunks(arr: zarr.Array, box: tuple[slice, ...]) -> list[tuple[int, ...]]:
    """Grid coordinates of the stored chunks (shards) that ``box`` touches."""
    _, block = _storage_grid(arr)
    ranges = []
    for s, n, c in zip(box, arr.shape, block, strict=True):
        lo, hi, _ = s.indices(int(n))
        ranges.append(range(lo // c, -(-hi // c)) if hi > lo else range(0))
    return list(itertools.product(*ranges))


def _normalize_box(arr: zarr.Array, box: Sequence[slice] | None) -> tuple[slice, ...]:
    given: tuple[Any, ...] = tuple(box) if box is not None else ()
    if len(given) > arr.ndim or not all(isinstance(s, slice) and s.step in (None, 1) for s in given):
        raise ConfigError(f"read_block needs at most {arr.ndim} slices with step 1, not {given!r}")
    return cast(tuple[slice, ...], given) + (slice(None),) * (arr.ndim - len(given))


@dataclass(frozen=True)
class _StrictSource:
    """An array-like over a local Zarr array whose reads go through :func:`read_block`."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, box: Any) -> np.ndarray:
        return read_block(self.path, tuple(box) if isinstance(box, tuple) else (box,))


def read_block(array: zarr.Array | str | os.PathLike[str], box: Sequence[slice] | None = None, *,
               missing_ok: bool = False) -> np.ndarray:
    """Read ``array[box]`` into memory, refusing missing and undecodable chunks.

    The strict way to read an image level (Zarr itself reads a missing chunk as the fill value and
    raises codec-specific errors for a damaged one).

    Parameters
    ----------
    array : zarr.Array or str or Path
        The array, or the path of a local Zarr array (e.g. :meth:`OmeImage.array_path`).
    box : sequence of slice, optional
        Basic slices with step 1, one per axis (missing trailing axes are whole); default the whole
        array.
    missing_ok : bool
        Read absent chunks as the fill value (label images, where absent means 0).

    Returns
    -------
    ndarray
        ``array[box]``.

    Raises
    ------
    InputError
        A chunk the box touches is missing, or cannot be decoded (the array's path and the chunk's
        grid coordinates are named).
    """
    arr = _as_array(array)
    box = _normalize_box(arr, box)
    base = _array_dir(arr)
    label = str(base if base is not None else arr.store_path)
    chunks = _box_chunks(arr, box)
    if not missing_ok and base is not None:
        encode = arr.metadata.encode_chunk_key
        absent = [c for c in chunks if not (base / encode(c)).is_file()]
        if absent:
            raise InputError(f"{label}: {len(absent)} of the {len(chunks)} chunks read are missing (e.g. "
                             f"chunk {_grid_name(arr)} = {absent[0]}); the store is damaged")
    try:
        return np.asarray(arr[box])
    except Exception as err:  # codecs raise many types on damaged data
        bad = _undecodable(arr, chunks)
        if bad is None:
            raise
        coord, cause = bad
        raise InputError(f"{label}: chunk {_grid_name(arr)} = {coord} cannot be decoded "
                         f"({_one_line(cause)}); the store is damaged") from err


def _grid_name(arr: zarr.Array) -> str:
    names = arr.metadata.dimension_names if hasattr(arr.metadata, "dimension_names") else None
    if names and all(isinstance(n, str) for n in names):
        return "(" + ", ".join(str(n) for n in names) + ")"
    return "(" + ", ".join(f"axis {i}" for i in range(arr.ndim)) + ")"


def _undecodable(arr: zarr.Array, chunks: list[tuple[int, ...]]) -> tuple[tuple[int, ...], Exception] | None:
    """The first of ``chunks`` whose data cannot be read, with the error; None if all read."""
    _, block = _storage_grid(arr)
    for c in chunks:
        region = tuple(slice(i * b, min((i + 1) * b, int(n)))
                       for i, b, n in zip(c, block, arr.shape, strict=True))
        try:
            arr[region]
        except Exception as err:  # codecs raise many types on damaged data
            return c, err
    return None


def open_image(path: str | os.PathLike[str], *, check_chunks: bool = True) -> OmeImage:
    """Open an OME-Zarr 0.5 image written by :func:`write_image` (or any 3-D z, y, x image).

    The metadata are validated at every level, every level's array is opened and checked (3-D,
    numeric, each halving the one above), and level 0 must have all its chunks.

    Parameters
    ----------
    path : str or Path
        The image root.
    check_chunks : bool
        Check that every chunk of level 0 is stored (one listing of its directory). Writers that
        only need the geometry (label images) pass False.

    Raises
    ------
    InputError
        ``path`` is not an OME-Zarr 0.5 image with z, y, x axes, its metadata are malformed, a level
        is missing or inconsistent, or level 0 has missing chunks (one line naming the field,
        level or chunk).
    """
    p = Path(path)
    root = open_root(p)
    ms = read_multiscale(p, root.attrs.asdict())
    paths = tuple(d["path"] for d in ms["datasets"])
    above: tuple[int, ...] | None = None
    level0: zarr.Array | None = None
    for k, key in enumerate(paths):
        arr = open_level_array(p, key, k)
        _check_level(p, key, k, arr, above)
        above = tuple(int(n) for n in arr.shape)
        level0 = arr if level0 is None else level0
    assert level0 is not None  # read_multiscale refuses empty datasets
    if check_chunks:
        check_chunks_present(level0, where=str(p), what="level 0")
    vs = voxel_size_of(p, ms, 0)
    kind = ms.get("type")
    return OmeImage(p, da.from_zarr(level0), vs, len(paths), ms.get("name"), paths,
                    voxel_size_assumed=voxel_size_is_assumed(root.attrs.asdict()),
                    downsampling=kind if isinstance(kind, str) else None)


def voxel_size_is_assumed(attrs: dict[str, Any]) -> bool:
    """Whether an image's attributes mark its voxel size as assumed (see :func:`write_image`)."""
    ours = attrs.get(SXTDASK_ATTRS)
    return isinstance(ours, dict) and ours.get("voxel_size") == "assumed"
