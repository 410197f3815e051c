"""Write and read OME-Zarr 0.5 images (Zarr v3) with a 2x multiscale pyramid.

:func:`write_image` streams a volume slab by slab (one chunk depth at a time) into a temporary
sibling directory and renames it into place only when every level and the metadata are written, so
an interrupted run never leaves an output that looks complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import dask.array as da
import numpy as np
import zarr

from sxtdask._fs import atomic_directory as _atomic_directory
from sxtdask.errors import ConfigError, InputError, InvalidVolumeError
from sxtdask.io._checks import check_dtype, check_shape
from sxtdask.io._volume import Volume

__all__ = [
    "AXES", "MAX_EXTRA_LEVELS", "MIN_LEVEL_SIZE", "OmeImage", "atomic_directory", "level_chunks",
    "multiscale_metadata", "normalize_chunks", "open_image", "open_root", "pyramid_shapes",
    "write_image", "write_pyramid",
]

logger = logging.getLogger(__name__)

OME_VERSION = "0.5"
AXES = ("z", "y", "x")
MIN_LEVEL_SIZE = 32
MAX_EXTRA_LEVELS = 4
DEFAULT_CHUNK_DEPTH = 32
Shape3 = tuple[int, int, int]
Progress = Callable[[int, int], None]


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


def check_voxel_size(voxel_size_nm: Any) -> tuple[float, float, float]:
    """Validate a (z, y, x) voxel size in nanometres."""
    try:
        vs = tuple(float(v) for v in voxel_size_nm)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"voxel_size_nm {voxel_size_nm!r} must be three numbers (z, y, x)") from err
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise ConfigError(f"voxel_size_nm {voxel_size_nm!r} must be three positive finite numbers (z, y, x)")
    return vs


# --- atomic output --------------------------------------------------------------------------------

_EXISTS = "{subject}: exists; pass --overwrite to replace it"


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


def create_level(group: zarr.Group, k: int, shape: tuple[int, ...], chunks: tuple[int, ...],
                 dtype: Any) -> zarr.Array:
    """Create (replacing any) array ``str(k)`` of ``group`` with z, y, x dimension names."""
    return group.create_array(
        str(k), shape=shape, chunks=level_chunks(chunks, shape), dtype=dtype, fill_value=0,
        dimension_names=AXES, overwrite=True,
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
    tick: Callable[[], None],
) -> None:
    """Write levels ``1..len(shapes)-1`` of ``group``, each slab by slab from the level above it."""
    reduce = REDUCERS[method]
    prev = array_at(group, "0")
    for k, shape in enumerate(shapes[1:], start=1):
        arr = create_level(group, k, shape, chunks, prev.dtype)
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
    name: str | None = None, progress: Progress | None = None,
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
        Voxel size in nanometres; default the volume's (1.0 for arrays).
    overwrite : bool
        Replace an existing ``out`` (removed only once the new image is complete).
    name : str, optional
        Multiscale name; default the source file's stem.
    progress : callable, optional
        Called as ``progress(done_slabs, total_slabs)`` after each slab of every level.

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
    default_vs = volume.voxel_size_nm if isinstance(volume, Volume) else (1.0, 1.0, 1.0)
    vs = check_voxel_size(voxel_size_nm if voxel_size_nm is not None else default_vs)
    chunks = normalize_chunks(chunks, src.shape)
    dtype = np.dtype(np.float32) if src.dtype == np.float16 else src.dtype
    shapes = pyramid_shapes(src.shape)
    tick = _counter(count_slabs(shapes, chunks), progress)
    with atomic_directory(out, overwrite) as partial:
        root = zarr.open_group(partial, mode="w", zarr_format=3)
        create_level(root, 0, src.shape, chunks, dtype)
        _write_level0(src, array_at(root, "0"), tick)
        write_pyramid(root, shapes, chunks, "mean", tick)
        ms = multiscale_metadata(name or src.name, vs, len(shapes), "mean")
        root.attrs.update({"ome": {"version": OME_VERSION, "multiscales": [ms]}})
    logger.info("%s: wrote OME-Zarr image %s %s, chunks %s, %d levels", out, src.shape, dtype, chunks,
                len(shapes))
    return out


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
        Zarr paths of the levels, finest first.
    """

    path: Path
    data: da.Array
    voxel_size_nm: tuple[float, float, float]
    levels: int
    name: str | None
    level_paths: tuple[str, ...] = ()

    def level(self, k: int) -> da.Array:
        """Pyramid level ``k`` (0 is full resolution) as a (Z, Y, X) Dask array."""
        if not 0 <= k < self.levels:
            raise ConfigError(f"{self.path}: level {k} does not exist (levels 0..{self.levels - 1})")
        key = self.level_paths[k] if self.level_paths else str(k)
        return da.from_zarr(zarr.open_array(self.path / key, mode="r"))


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
        raise InputError(f"{p}: not an OME-Zarr 0.5 image ({err})") from err


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


def read_multiscale(path: Path, attrs: dict[str, Any]) -> dict[str, Any]:
    """The single validated ``multiscales`` entry of OME-Zarr 0.5 attributes."""
    ome = attrs.get("ome")
    if not isinstance(ome, dict) or ome.get("version") != OME_VERSION:
        found = ome.get("version") if isinstance(ome, dict) else None
        raise InputError(f"{path}: not an OME-Zarr 0.5 image (ome version {found!r})")
    ms = ome.get("multiscales")
    if not ms or not ms[0].get("datasets"):
        raise InputError(f"{path}: OME-Zarr group without 'multiscales' datasets (not an image)")
    axes = tuple(a.get("name") for a in ms[0].get("axes", []))
    if axes != AXES:
        raise InputError(f"{path}: image axes {axes}; sxtdask needs ('z', 'y', 'x')")
    return ms[0]


def _scale(path: Path, dataset: dict[str, Any]) -> tuple[float, float, float]:
    for t in dataset.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            return cast(tuple[float, float, float], tuple(float(v) for v in t["scale"]))
    raise InputError(f"{path}: dataset {dataset.get('path')!r} has no scale transformation")


def open_image(path: str | os.PathLike[str]) -> OmeImage:
    """Open an OME-Zarr 0.5 image written by :func:`write_image` (or any 3-D z, y, x image).

    Raises
    ------
    InputError
        ``path`` is not an OME-Zarr 0.5 image with z, y, x axes.
    """
    p = Path(path)
    root = open_root(p)
    ms = read_multiscale(p, root.attrs.asdict())
    first = ms["datasets"][0]
    try:
        arr = root[first["path"]]
    except KeyError as err:
        raise InputError(f"{p}: level {first['path']!r} listed in the metadata is missing") from err
    paths = tuple(str(d["path"]) for d in ms["datasets"])
    return OmeImage(p, da.from_zarr(arr), _scale(p, first), len(paths), ms.get("name"), paths)
