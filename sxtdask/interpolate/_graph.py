"""The lazy graph of one interpolation: blocks, their reads, the walk and merge tasks (or the
shape method's distance maps and cubics), as Dask arrays with readable task names.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass
from typing import Any, cast

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from sxtdask.engine import task_prefix
from sxtdask.errors import ConfigError, InputError, InvalidVolumeError

from ._config import InterpolationConfig, Method
from ._shape import needed_slices, shape_block, slice_sdf
from ._slices import LabelSummary, check_summary, summarize_labels
from ._walk import Box, WalkPlan, grow, intersect, label_dtype, labels_halo, merge_block, walk_block

__all__ = ["DEFAULT_DEPTH", "Interpolation", "block_grid", "interpolate_labels"]

logger = logging.getLogger(__name__)

#: Slices per block along z unless told otherwise (full planes): with the default reach of 100 a
#: merge adds up the hits of at most five walk tasks, and a 512-slice volume gives two workers
#: eight blocks to share.
DEFAULT_DEPTH = 64


@dataclass(frozen=True)
class Interpolation:
    """An interpolation's lazy results.

    Attributes
    ----------
    labels : (Z, Y, X) dask.array.Array
        The interpolated labels (uint8, or wider for class values beyond 255).
    uncertainty : (Z, Y, X) uint8 dask.array.Array or None
        Biomedisa's uncertainty × 255 (walk method with ``uncertainty`` only).
    blocks : list of Delayed
        Per block, in ``labels``' block order (C order of the block grid): ``(labels,
        uncertainty or None, {"seeds": n})``, n the seed voxels its walk task walked from (0 for
        the shape method).
    boxes : list of box
        Per block, its global [lo, hi) per axis.
    summary : LabelSummary
    config : InterpolationConfig
    walkable : tuple of (int, int)
        The crop: outside it the labels are 0.
    """

    labels: da.Array
    uncertainty: da.Array | None
    blocks: list[Delayed]
    boxes: list[tuple[tuple[int, int], ...]]
    summary: LabelSummary
    config: InterpolationConfig
    walkable: tuple[tuple[int, int], ...]

    @property
    def classes(self) -> tuple[int, ...]:
        return self.summary.classes


def block_grid(shape: tuple[int, ...], chunks: Any = None) -> tuple[tuple[int, ...], ...]:
    """The interpolation's blocks: ``chunks`` (Z, Y, X; uneven edges allowed) or
    :data:`DEFAULT_DEPTH` full slices.
    """
    if chunks is None:
        chunks = (min(shape[0], DEFAULT_DEPTH), shape[1], shape[2])
    try:
        return da.core.normalize_chunks(chunks, shape)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"chunks {chunks!r} do not fit the shape {shape}: {err}") from None


def _boxes(chunks: tuple[tuple[int, ...], ...]) -> dict[tuple[int, ...], Box]:
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in chunks]
    return {idx: tuple((int(starts[a][i]), int(starts[a][i] + chunks[a][i])) for a, i in enumerate(idx))
            for idx in np.ndindex(*(len(c) for c in chunks))}


def _region(array: da.Array, box: Box) -> da.Array:
    """One chunk holding ``array`` over ``box``."""
    return array[tuple(slice(lo, hi) for lo, hi in box)].rechunk(-1)


def _range_of(image: da.Array, source: str) -> Delayed:
    """Lazy (min, max) of the image's voxels, refusing NaN or infinite voxels."""
    lo, hi = da.min(image), da.max(image)
    bad = (~da.isfinite(image)).sum() if image.dtype.kind == "f" else da.zeros((), dtype=int)

    def check(lo: Any, hi: Any, bad: Any) -> tuple[float, float]:
        if int(bad):
            raise InvalidVolumeError(f"{source}: {int(bad)} voxels are NaN or infinite; a tomogram "
                                     "must hold finite values")
        return float(lo), float(hi)

    from dask import delayed

    key = f"interpolate-range-{tokenize(image)}"
    return cast(Delayed, delayed(check, pure=True)(lo, hi, bad, dask_key_name=key))


def _plan(value_range: tuple[float, float], summary: LabelSummary, config: InterpolationConfig,
          walkable: Box) -> WalkPlan:
    return WalkPlan(shape=summary.shape, classes=summary.classes, labelled=summary.labelled,
                    walkable=walkable, low=float(value_range[0]), high=float(value_range[1]),
                    config=config)


def interpolate_labels(
    image: da.Array | None, labels: da.Array, config: InterpolationConfig | None = None, *,
    chunks: Any = None, summary: LabelSummary | None = None,
    value_range: tuple[float, float] | None = None, name: str | None = None,
) -> Interpolation:
    """Interpolate the sparse ``labels`` (Biomedisa's smart interpolation, or shape-based).

    Parameters
    ----------
    image : (Z, Y, X) dask.array.Array, or None for the shape method
        The tomogram (any real dtype; scaled to 0..255 by its global range).
    labels : (Z, Y, X) integer dask.array.Array
        The same shape; labelled slices carry class values (see :mod:`._slices` for the rules).
    config : InterpolationConfig, optional
        Default: Biomedisa's walks along z.
    chunks : (Z, Y, X), optional
        The blocks (default :data:`DEFAULT_DEPTH` full slices). The result does not depend on
        them; memory does (a walk task holds its block grown by the reach).
    summary : LabelSummary, optional
        From :func:`summarize_labels` (computed here, one pass over the labels, when not given:
        the blocks are planned from it). Checked with :func:`check_summary`.
    value_range : (float, float), optional
        The image's global (min, max); computed in the graph when not given.
    name : str, optional
        The tomogram's name in task keys (the dashboard's task stream).

    Returns
    -------
    Interpolation
        Lazy labels (and uncertainty), chunked like ``chunks``.

    Raises
    ------
    InputError
        Shapes differ, or the labels cannot be interpolated (:func:`check_summary`).
    """
    config = InterpolationConfig() if config is None else config
    shape = tuple(int(n) for n in labels.shape)
    if image is not None and tuple(image.shape) != shape:
        raise InputError(f"the image {tuple(image.shape)} and the labels {shape} differ in shape")
    if labels.ndim != 3:
        raise InputError(f"labels must be 3-D (z, y, x), not {labels.ndim}-D")
    if config.method is Method.WALK and image is None:
        raise ConfigError("the walk method needs the image")
    if summary is None:
        summary = summarize_labels(labels, config).compute()
    check_summary(summary, config)
    grid = block_grid(shape, chunks)
    walkable = summary.walkable(config.crop)
    prefix = task_prefix("interpolate", [config.method.value], name)
    if config.method is Method.SHAPE:
        return _shape_graph(labels, summary, config, grid, prefix)
    assert image is not None
    return _walk_graph(image, labels, summary, config, grid, walkable, value_range, prefix)


def _walk_graph(image: da.Array, labels: da.Array, summary: LabelSummary, config: InterpolationConfig,
                grid: tuple[tuple[int, ...], ...], walkable: Box, value_range: tuple[float, float] | None,
                prefix: str) -> Interpolation:
    token = tokenize(image, labels, summary, config, grid)
    volume: Box = tuple((0, n) for n in summary.shape)
    deps: list[Any] = []
    dsk: dict[Any, Any] = {}
    if value_range is None:
        rng = _range_of(image, "the image")
        deps.append(rng)
        range_key: Any = rng.key
    else:
        range_key = tuple(float(v) for v in value_range)
    plan_key = f"{prefix}-plan-{token}"
    dsk[plan_key] = (_plan, range_key, summary, config, walkable)
    walks, merges = f"{prefix}-walks-{token}", f"{prefix}-merge-{token}"
    boxes = _boxes(grid)
    walk_keys: dict[tuple[int, ...], Any] = {}
    for idx, core in boxes.items():
        box = intersect(core, walkable)
        if box is None:
            continue
        img_box, lab_box = grow(box, config.halo, volume), grow(box, labels_halo(config), volume)
        img, lab = _region(image, img_box), _region(labels, lab_box)
        deps += [img, lab]
        walk_keys[idx] = (walks, *idx)
        dsk[walk_keys[idx]] = (walk_block, (img.name, 0, 0, 0), tuple(lo for lo, _ in img_box),
                               (lab.name, 0, 0, 0), tuple(lo for lo, _ in lab_box), core, plan_key)
    for idx, core in boxes.items():
        target = grow(core, config.smooth, volume)
        near = [k for k in walk_keys if intersect(grow(boxes[k], config.reach, volume), target) is not None]
        parts = [walk_keys[k] for k in near]
        own = near.index(idx) if idx in near else -1
        dsk[(merges, *idx)] = (merge_block, parts, core, plan_key, own)
    out_name, unc_name = f"{prefix}-labels-{token}", f"{prefix}-uncertainty-{token}"
    for idx in boxes:
        dsk[(out_name, *idx)] = (operator.getitem, (merges, *idx), 0)
        dsk[(unc_name, *idx)] = (operator.getitem, (merges, *idx), 1)
    graph = HighLevelGraph.from_collections(out_name, dsk, dependencies=deps)
    dtype = label_dtype(summary.classes)
    out = da.Array(graph, out_name, grid, dtype=dtype)
    unc = da.Array(graph, unc_name, grid, dtype=np.uint8) if config.uncertainty else None
    blocks = [Delayed((merges, *idx), graph, layer=out_name) for idx in boxes]
    logger.info("interpolation (walk): %d blocks, %d with seeds to walk, walkable box %s",
                len(boxes), len(walk_keys), walkable)
    return Interpolation(out, unc, blocks, list(boxes.values()), summary, config, walkable)


def _shape_graph(labels: da.Array, summary: LabelSummary, config: InterpolationConfig,
                 grid: tuple[tuple[int, ...], ...], prefix: str) -> Interpolation:
    (axis,) = config.axis.indices
    positions = summary.labelled[axis]
    token = tokenize(labels, summary, config, grid)
    sdf_name, out_name = f"{prefix}-sdf-{token}", f"{prefix}-labels-{token}"
    dsk: dict[Any, Any] = {}
    deps: list[Any] = []
    used: set[int] = set()
    boxes = _boxes(grid)
    dtype = label_dtype(summary.classes)
    for idx, core in boxes.items():
        need = needed_slices(positions, *core[axis])
        used.update(need)
        dsk[(out_name, *idx)] = (shape_block, [(sdf_name, i) for i in need], need, positions, core, axis,
                                 summary.classes, dtype)
    for i in sorted(used):
        index: list[Any] = [slice(None)] * 3
        index[axis] = positions[i]
        plane = labels[tuple(index)].rechunk(-1)
        deps.append(plane)
        dsk[(sdf_name, i)] = (slice_sdf, (plane.name, 0, 0), summary.classes)
    part_name = f"{prefix}-part-{token}"
    for idx in boxes:
        dsk[(part_name, *idx)] = (_shape_part, (out_name, *idx))
    graph = HighLevelGraph.from_collections(out_name, dsk, dependencies=deps)
    out = da.Array(graph, out_name, grid, dtype=dtype)
    blocks = [Delayed((part_name, *idx), graph, layer=out_name) for idx in boxes]
    return Interpolation(out, None, blocks, list(boxes.values()), summary, config,
                         tuple((0, n) for n in summary.shape))


def _shape_part(labels: np.ndarray) -> tuple[np.ndarray, None, dict[str, int]]:
    return labels, None, {"seeds": 0}
