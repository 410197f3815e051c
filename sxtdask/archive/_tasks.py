"""What runs on the workers for one tomogram besides the pipeline: checksum and conversion.

These are plain functions of paths (picklable, idempotent): Dask may run them again on another
worker after a worker dies, and each either finishes its whole output or leaves none that looks
complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sxtdask.errors import InputError, SxtdaskError
from sxtdask.io import open_image, open_volume, write_image

__all__ = ["TaskError", "convert_tomogram", "guarded", "sha256_path"]

logger = logging.getLogger(__name__)

_BLOCK = 4 << 20


@dataclass(frozen=True)
class TaskError:
    """A user error (``SxtdaskError``) met by a task, returned instead of raised (a corrupt input is
    an expected outcome of an archive run, not a worker error with a traceback in the logs).
    """

    message: str


def guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or a :class:`TaskError` with the message of the ``SxtdaskError`` it raised."""
    try:
        return fn(*args)
    except SxtdaskError as err:
        logger.info("%s", err)
        return TaskError((str(err).strip().splitlines() or [type(err).__name__])[0])


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                h.update(block)
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file (removed while the archive ran?)") from err
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from err
    return h.hexdigest()


def _image_files(root: Path) -> list[Path]:
    """Files of a Zarr folder that hold the image: hidden files and ``labels/`` are left out."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not (here == root and d == "labels"))
        files.extend(here / f for f in sorted(filenames) if not f.startswith("."))
    return files


def sha256_path(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a tomogram: of the file's bytes, or for a Zarr folder of its image files.

    A folder's checksum hashes, in sorted order, each file's relative path and SHA-256; hidden
    files and the ``labels/`` group are left out (labels are not part of the input image).

    Raises
    ------
    InputError
        The path is missing or unreadable.
    """
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256(b"sxtdask-zarr-folder\n")
        for f in _image_files(p):
            h.update(f"{f.relative_to(p).as_posix()}\0{_sha256_file(f)}\n".encode())
        return h.hexdigest()
    if not p.exists():
        raise InputError(f"{p}: no such file (removed while the archive ran?)")
    return _sha256_file(p)


def convert_tomogram(
    source: str, kind: str, out: str, chunks: tuple[int, int, int] | None,
) -> dict[str, Any]:
    """Write one tomogram as an OME-Zarr image at ``out`` (atomically, replacing an old one).

    Parameters
    ----------
    source : str
        A tomogram file, or an OME-Zarr image (``kind == "ome-zarr"``), whose level 0 is copied
        with its voxel size (labels are not copied).
    kind : {"file", "ome-zarr"}
    out : str
        The image to write; its parent folder is created.
    chunks : (cz, cy, cx) or None
        Chunk shape; default 32 full slices.

    Returns
    -------
    dict
        ``shape``, ``dtype``, ``voxel_size_nm`` and ``voxel_size_assumed`` of the written image.
    """
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "ome-zarr":
        import zarr

        img = open_image(source)
        level0 = zarr.open_array(Path(source) / img.level_paths[0], mode="r")
        write_image(level0, target, chunks=chunks, voxel_size_nm=img.voxel_size_nm,
                    voxel_size_assumed=img.voxel_size_assumed, name=img.name or Path(source).name,
                    overwrite=True)
    else:
        with open_volume(source) as vol:
            write_image(vol, target, chunks=chunks, overwrite=True)
    img = open_image(target)
    return {"shape": list(img.data.shape), "dtype": str(img.data.dtype),
            "voxel_size_nm": list(img.voxel_size_nm), "voxel_size_assumed": img.voxel_size_assumed}
