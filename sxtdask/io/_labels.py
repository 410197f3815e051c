"""OME-Zarr 0.5 label images (``labels/<name>``) inside an image written by :func:`write_image`.

A label image is written in two steps so that an interrupted run never looks complete:
:func:`create_labels` makes the empty level-0 array for the engine to fill chunk by chunk, and
:func:`finalize_labels` builds the nearest-neighbour pyramid, writes the ``image-label`` metadata and
only then lists the name in ``labels/`` — the mark that a label image is complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from sxtdask.errors import OVERWRITE, ConfigError, InputError, OutputError
from sxtdask.io._omezarr import (
    OME_VERSION,
    array_at,
    check_voxel_size,
    count_slabs,
    create_level,
    group_at,
    member,
    multiscale_metadata,
    normalize_chunks,
    open_image,
    open_level_array,
    open_root,
    read_multiscale,
    write_pyramid,
)

__all__ = [
    "LABEL_DTYPES", "create_labels", "finalize_labels", "label_classes", "labels_complete",
    "list_labels", "open_labels", "write_labels",
]

logger = logging.getLogger(__name__)

LABEL_DTYPES = tuple(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32",
                                            "uint64", "int64"))
PathLike = str | os.PathLike[str]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or name.startswith("."):
        raise ConfigError(f"label name {name!r} must be a non-empty name without '/' or a leading '.'")
    return name


def _label_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return np.dtype(np.uint8)
    if dt not in LABEL_DTYPES:
        raise ConfigError(
            f"label dtype {dt} is not an OME-Zarr label type ({', '.join(map(str, LABEL_DTYPES))})")
    return dt


def _listed(root: zarr.Group, path: PathLike | None = None) -> list[str]:
    """Names listed in ``labels/`` attributes (complete label images).

    Raises
    ------
    InputError
        ``labels/`` is not a group, or its ``ome.labels`` is not a list of names.
    """
    where = path if path is not None else str(root.store_path)
    node = member(root, "labels", where)
    if node is None:
        return []
    if not isinstance(node, zarr.Group):
        raise InputError(f"{where}: 'labels' is an array, not the OME-Zarr labels group")
    ome: Any = node.attrs.asdict().get("ome", {})
    names = ome.get("labels", []) if isinstance(ome, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{where}: malformed OME-Zarr metadata: labels/ ome.labels is not a list of names")
    return list(names)


def _set_listed(labels_group: zarr.Group, names: list[str]) -> None:
    labels_group.attrs.update({"ome": {"version": OME_VERSION, "labels": list(dict.fromkeys(names))}})


def list_labels(path: PathLike) -> list[str]:
    """Names of the complete label images of the OME-Zarr image at ``path``."""
    return _listed(open_root(path), path)


def _label_group(root: zarr.Group, path: PathLike, name: str) -> zarr.Group:
    """The group ``labels/<name>``; InputError if it is missing or an array."""
    labels = member(root, "labels", path)
    node = member(labels, name, path) if isinstance(labels, zarr.Group) else None
    if node is None:
        raise InputError(f"{path}: label image {name!r} is listed but labels/{name} is missing")
    if not isinstance(node, zarr.Group):
        raise InputError(f"{path}: labels/{name} is an array, not a label image group")
    return node


def labels_complete(path: PathLike, name: str) -> bool:
    """True if ``labels/<name>`` is listed and every level its metadata names exists."""
    root = open_root(path)
    if name not in _listed(root, path):
        return False
    try:
        group = _label_group(root, path, name)
        datasets = read_multiscale(Path(path) / "labels" / name, group.attrs.asdict())["datasets"]
        return all(isinstance(member(group, d["path"], path), zarr.Array) for d in datasets)
    except InputError:
        return False


def _labels_group(root: zarr.Group) -> zarr.Group:
    """``labels/``, created with an empty list if missing."""
    group = root.require_group("labels")
    if "ome" not in group.attrs:
        _set_listed(group, [])
    return group


def _reuse(group: zarr.Group, shape: tuple[int, ...], chunks: tuple[int, ...],
           dtype: np.dtype) -> zarr.Array | None:
    """The existing level-0 array of an unfinished label image, if it matches (a resumed run)."""
    arr = group.get("0")
    if isinstance(arr, zarr.Array) and arr.shape == shape and arr.chunks == chunks and arr.dtype == dtype:
        return arr
    return None


def create_labels(
    path: PathLike, name: str, *, shape: Sequence[int], chunks: Sequence[int] | None,
    dtype: Any = "uint32", overwrite: bool = False,
) -> zarr.Array:
    """Create the empty level-0 array ``labels/<name>/0`` for chunk-by-chunk writing.

    The label image is not yet listed in ``labels/`` and has no multiscales metadata: it does not look
    complete until :func:`finalize_labels`. An unfinished one with the same shape, chunks and dtype is
    returned as it is (so an interrupted run can resume); ``overwrite`` always starts afresh.

    Parameters
    ----------
    path : str or Path
        The OME-Zarr image.
    name : str
        Label image name, e.g. ``"isg"``.
    shape : (Z, Y, X)
        Must equal the image's level-0 shape.
    chunks : (cz, cy, cx) or None
        Chunk shape, clipped to ``shape``; None uses the image's level-0 chunks.
    dtype : integer dtype
        One of the OME-Zarr label types (default uint32).
    overwrite : bool
        Replace a complete label image of the same name.

    Raises
    ------
    OutputError
        A complete ``labels/<name>`` exists and ``overwrite`` is False.
    """
    _check_name(name)
    image = open_image(path, check_chunks=False)
    if tuple(shape) != image.data.shape:
        raise ConfigError(
            f"{path}: label shape {tuple(shape)} differs from the image shape {image.data.shape}")
    chunks = normalize_chunks(chunks if chunks is not None else image.data.chunksize, image.data.shape)
    dt = _label_dtype(dtype)
    root = open_root(path, mode="r+")
    group = _labels_group(root)
    if name in group:
        if labels_complete(path, name) and not overwrite:
            raise OutputError(f"{path}: label image {name!r} exists; pass {OVERWRITE} to replace it")
        reuse = None if overwrite else _reuse(group_at(group, name), image.data.shape, chunks, dt)
        if reuse is not None:
            logger.info("%s: resuming the unfinished label image %r", path, name)
            return reuse
        _set_listed(group, [n for n in _listed(root, path) if n != name])
        del group[name]
    return create_level(group.create_group(name), 0, image.data.shape, chunks, dt)


def _colors(colors: dict[int, tuple[int, ...]] | None) -> list[dict[str, Any]]:
    out = []
    for value, rgba in (colors or {}).items():
        rgba = tuple(int(c) for c in rgba)
        if len(rgba) not in (3, 4) or not all(0 <= c <= 255 for c in rgba):
            raise ConfigError(f"color {rgba} for label {value} must be 3 or 4 integers in 0..255")
        out.append({"label-value": int(value), "rgba": list(rgba + (255,) * (4 - len(rgba)))})
    return out


def finalize_labels(
    path: PathLike, name: str, *, voxel_size_nm: tuple[float, float, float] | None = None,
    colors: dict[int, tuple[int, ...]] | None = None, listed: bool = True,
    title: str | None = None, classes: dict[int, str] | None = None,
) -> None:
    """Build the label pyramid and metadata, then list ``name`` in ``labels/`` (last).

    Levels 1.. are stride-2 subsamplings (nearest neighbour, never mixing IDs), written slab by slab,
    with as many levels as the image.

    Parameters
    ----------
    path : str or Path
        The OME-Zarr image.
    name : str
        A label image made by :func:`create_labels`.
    voxel_size_nm : (z, y, x), optional
        Level-0 voxel size, nanometres; default the image's.
    colors : dict of int to (r, g, b[, a]), optional
        Display colours (0..255) per label value.
    listed : bool
        List it in ``labels/`` now. Writers that finalize several label images at once, in
        parallel, pass False and list them all afterwards with :func:`list_label_images` (the
        listing is one read-modify-write of ``labels/zarr.json``).
    title : str, optional
        The multiscales name; default ``name`` (a label image built under a staging name and
        moved into place afterwards carries the name it will have).
    classes : dict of int to str, optional
        What each label value means (a semantic label image's classes), written as the
        ``image-label`` ``properties`` (``{"label-value": v, "class": name}``).
    """
    _check_name(name)
    image = open_image(path, check_chunks=False)
    root = open_root(path, mode="r+")
    try:
        group = group_at(root, "labels", name)
        level0 = array_at(group, "0")
    except KeyError as err:
        raise InputError(f"{path}: no label array labels/{name}/0; call create_labels first") from err
    shapes = [tuple(level0.shape)]
    for _ in range(1, image.levels):  # as many levels as the image, each half the one above (rounded up)
        shapes.append(tuple((n + 1) // 2 for n in shapes[-1]))
    write_pyramid(group, shapes, level0.chunks, "nearest", lambda: None)
    vs = check_voxel_size(voxel_size_nm if voxel_size_nm is not None else image.voxel_size_nm)
    image_label: dict[str, Any] = {"version": OME_VERSION, "source": {"image": "../../"}}
    if colors:
        image_label["colors"] = _colors(colors)
    if classes:
        image_label["properties"] = [{"label-value": int(v), "class": str(c)}
                                     for v, c in sorted(classes.items())]
    ms = multiscale_metadata(title or name, vs, len(shapes), "nearest")
    group.attrs.update({"ome": {"version": OME_VERSION, "multiscales": [ms], "image-label": image_label}})
    if listed:
        list_label_images(path, [name])
    logger.info("%s: label image %r complete (%d levels, %d slabs)", path, name, len(shapes),
                count_slabs(shapes, level0.chunks))


def list_label_images(path: PathLike, names: list[str]) -> None:
    """List finalized label images in ``labels/`` (in this order, after those already listed).

    Raises
    ------
    InputError
        One has no multiscales metadata yet (:func:`finalize_labels` with ``listed=False``).
    """
    root = open_root(path, mode="r+")
    labels_group = group_at(root, "labels")
    for name in names:
        _check_name(name)
        ome: Any = labels_group[name].attrs.get("ome", {})
        if "multiscales" not in ome:
            raise InputError(f"{path}: label image {name!r} is not finalized; cannot list it")
    listed = _listed(root, path)
    _set_listed(labels_group, listed + [n for n in names if n not in listed])


def write_labels(
    path: PathLike, name: str, labels: np.ndarray | da.Array, *, chunks: tuple[int, int, int] | None = None,
    overwrite: bool = False, colors: dict[int, tuple[int, ...]] | None = None,
) -> None:
    """Write a whole label volume as ``labels/<name>`` (create, fill level 0, finalize).

    Parameters
    ----------
    labels : (Z, Y, X) integer ndarray or dask array
        Same shape as the image. A dask array is written chunk by chunk, a NumPy array slab by slab.
    chunks : (cz, cy, cx), optional
        Default the image's level-0 chunks.
    """
    dtype = _label_dtype(labels.dtype)
    arr = create_labels(path, name, shape=tuple(labels.shape), chunks=chunks, dtype=dtype,
                        overwrite=overwrite)
    if isinstance(labels, da.Array):
        # dask types the targets as NumPy-like arrays; any object with __setitem__ works (zarr's do)
        da.store(labels.astype(dtype).rechunk(arr.chunks), arr, lock=False)  # type: ignore[arg-type]
    else:
        cz = arr.chunks[0]
        for z0 in range(0, arr.shape[0], cz):
            arr[z0: z0 + cz] = np.asarray(labels[z0: z0 + cz], dtype=dtype)
    finalize_labels(path, name, colors=colors)


def label_classes(path: PathLike, name: str) -> dict[int, str]:
    """What the values of label image ``labels/<name>`` mean, from its ``image-label``
    ``properties`` (``{"label-value": v, "class": name}``, as :func:`finalize_labels` writes
    them); empty where it names none.
    """
    try:
        group = _label_group(open_root(path), path, name)
    except (InputError, KeyError):
        return {}
    ome = group.attrs.asdict().get("ome", {})
    props = ome.get("image-label", {}).get("properties", []) if isinstance(ome, dict) else []
    out: dict[int, str] = {}
    for prop in props if isinstance(props, list) else []:
        if isinstance(prop, dict) and isinstance(prop.get("label-value"), int) and \
                isinstance(prop.get("class"), str):
            out[prop["label-value"]] = prop["class"]
    return out


def open_labels(path: PathLike, name: str) -> da.Array:
    """Level 0 of the complete label image ``labels/<name>`` as a (Z, Y, X) Dask array.

    Raises
    ------
    InputError
        No complete label image of that name (the message lists the available names).
    """
    root = open_root(path)
    image_ms = read_multiscale(Path(path), root.attrs.asdict())
    names = _listed(root, path)
    if name not in names:
        raise InputError(f"{path}: no label image {name!r}; available: {', '.join(names) or 'none'}")
    group = _label_group(root, path, name)
    where = Path(path) / "labels" / name
    key = read_multiscale(where, group.attrs.asdict())["datasets"][0]["path"]
    arr = open_level_array(where, key, 0)
    if arr.ndim != 3 or arr.dtype.kind not in "iu":
        raise InputError(f"{where}: level 0 ({key!r}) is a {arr.ndim}-D {arr.dtype} array; a label image "
                         "is a 3-D integer (z, y, x) array")
    image_shape = open_level_array(Path(path), image_ms["datasets"][0]["path"], 0).shape
    if arr.shape != image_shape:
        raise InputError(f"{where}: level 0 has shape {arr.shape}, the image {image_shape}")
    return da.from_zarr(arr)
