"""Which slices of a sparse label volume are labelled, which classes they seed, and where.

One reduction over the label volume, block by block (:func:`summarize_labels`), gives a small
:class:`LabelSummary`; :func:`check_summary` turns what makes interpolation impossible into one
error each. The rules are Biomedisa's:

- a voxel is *annotated* when it is non-zero (Biomedisa's rule), or, with an ``unlabelled`` value
  V, when it is not V (then 0 is a class like any other);
- along one axis, a slice is *labelled* when it holds an annotated voxel;
- along every axis (``all``), the annotated voxels of a slice that form a line one voxel thin
  in-plane (the trace of a labelled slice of another orientation) are discounted first, first
  along the lower in-plane axis, then along the other (beyond the volume counts as unannotated:
  sxtdask's rule; Biomedisa keeps lines along the volume's edge); two labelled slices of one axis
  must not be adjacent;
- inside labelled slices every voxel of a value >= 0 (and not V) is a seed of its class;
  negative values are never seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from sxtdask.errors import ConfigError, InputError, option

from ._config import Axis, InterpolationConfig

__all__ = ["MAX_CLASSES", "LabelSummary", "annotated", "check_summary", "labelled_mask",
           "summarize_labels"]

logger = logging.getLogger(__name__)

#: The most classes (distinct seed values) an interpolation takes: hit maps are kept per class.
MAX_CLASSES = 256


@dataclass(frozen=True)
class LabelSummary:
    """What the label volume holds, for planning and checking an interpolation.

    Attributes
    ----------
    shape : (Z, Y, X)
    labelled : dict of int to tuple of int
        Per array axis (0 z, 1 y, 2 x) of the configured orientation(s), the labelled slices.
    seeded : tuple of int
        The class values that have seeds (values >= 0 on labelled slices, the unlabelled value
        excepted), ascending.
    present : tuple of int
        Every value >= 0 (the unlabelled value excepted) anywhere in the volume.
    bbox : tuple of (int, int), or None
        Per axis [lo, hi) of the annotated voxels other than 0 (Biomedisa's crop centre), or
        None when there are none.
    unlabelled : int or None
        The configured unlabelled value.
    """

    shape: tuple[int, int, int]
    labelled: dict[int, tuple[int, ...]]
    seeded: tuple[int, ...]
    present: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...] | None
    unlabelled: int | None = None
    _slice_values: dict[int, dict[int, tuple[int, ...]]] = field(default_factory=dict, repr=False)

    @property
    def classes(self) -> tuple[int, ...]:
        """The classes the interpolation chooses among (the seeded values)."""
        return self.seeded

    def walkable(self, crop: int) -> tuple[tuple[int, int], ...]:
        """The box walkers may enter: the annotated objects' bounding box grown by ``crop`` voxels
        (Biomedisa's crop), within the volume; the whole volume when nothing but 0 is annotated.
        """
        if self.bbox is None:
            return tuple((0, n) for n in self.shape)
        return tuple((max(0, lo - crop), min(n, hi + crop)) for (lo, hi), n in zip(self.bbox, self.shape,
                                                                                   strict=True))


def annotated(labels: np.ndarray, unlabelled: int | None) -> np.ndarray:
    """The annotated voxels: non-zero (Biomedisa's rule) or not the ``unlabelled`` value."""
    return labels != (0 if unlabelled is None else unlabelled)


def _thin_removed(mask: np.ndarray, inplane: Iterable[int]) -> np.ndarray:
    """``mask`` less its voxels one voxel thin along each in-plane axis in turn (Biomedisa's rule
    for ``allaxis``): a voxel whose two neighbours along that axis are both unannotated, beyond
    the volume's edge counting as unannotated (Biomedisa keeps a line along the edge, whose
    outer neighbour it does not look at: then the trace of a labelled plane at the edge makes
    every crossing slice labelled, as in NCXT's annotations). At a block's halo face the result
    is wrong only for voxels the core does not look at.
    """
    ones = np.pad(mask, 1)
    for ax in inplane:
        lo, mid, hi = ([slice(None)] * 3 for _ in range(3))
        lo[ax], mid[ax], hi[ax] = slice(0, -2), slice(1, -1), slice(2, None)
        thin = np.zeros_like(ones)
        thin[tuple(mid)] = ones[tuple(mid)] & ~ones[tuple(lo)] & ~ones[tuple(hi)]
        ones &= ~thin
    return ones[1:-1, 1:-1, 1:-1]


def labelled_mask(block: np.ndarray, axis: int, unlabelled: int | None, *, thin: bool) -> np.ndarray:
    """The annotated voxels of ``block`` that make their slice along ``axis`` labelled."""
    mask = annotated(block, unlabelled)
    if thin:
        mask = _thin_removed(mask, [a for a in range(3) if a != axis])
    return mask


def _block_summary(block: np.ndarray, origin: tuple[int, ...], core: tuple[tuple[int, int], ...],
                   axes: tuple[int, ...], unlabelled: int | None, thin: bool) -> dict[str, Any]:
    """One block's part: per axis its labelled slices and, per slice, the values in it; the values
    present; the bounding box of the non-zero annotated voxels (core only, global coordinates).
    """
    mask = annotated(block, unlabelled)
    inner = tuple(slice(lo - o, hi - o) for (lo, hi), o in zip(core, origin, strict=True))
    core_block = block[inner]
    values = core_block[(core_block >= 0) & mask[inner]] if unlabelled is not None else \
        core_block[core_block >= 0]
    present = np.unique(values)
    if present.size > MAX_CLASSES:
        raise ConfigError(f"the labels hold more than {MAX_CLASSES} distinct values in one block; "
                          "interpolation takes class labels, not instances")
    part: dict[str, Any] = {"present": present.tolist(), "labelled": {}, "values": {}}
    for ax in axes:
        lab = labelled_mask(block, ax, unlabelled, thin=thin)[inner]
        others = tuple(a for a in range(3) if a != ax)
        flags = lab.any(axis=others)
        part["labelled"][ax] = (np.nonzero(flags)[0] + core[ax][0]).tolist()
        per_value: dict[int, list[int]] = {}
        for v in present.tolist():
            slices = np.nonzero((core_block == v).any(axis=others))[0] + core[ax][0]
            if slices.size:
                per_value[int(v)] = slices.tolist()
        part["values"][ax] = per_value
    fg = mask[inner] & (core_block != 0)
    part["bbox"] = None
    if fg.any():
        part["bbox"] = []
        for ax in range(3):
            hit = np.nonzero(fg.any(axis=tuple(a for a in range(3) if a != ax)))[0]
            part["bbox"].append((int(hit[0]) + core[ax][0], int(hit[-1]) + core[ax][0] + 1))
    return part


def _combine(parts: list[dict[str, Any]], shape: tuple[int, int, int], axes: tuple[int, ...],
             unlabelled: int | None) -> LabelSummary:
    labelled: dict[int, set[int]] = {ax: set() for ax in axes}
    values: dict[int, dict[int, set[int]]] = {ax: {} for ax in axes}
    present: set[int] = set()
    bbox: list[tuple[int, int]] | None = None
    for part in parts:
        present.update(part["present"])
        for ax in axes:
            labelled[ax].update(part["labelled"][ax])
            for v, slices in part["values"][ax].items():
                values[ax].setdefault(int(v), set()).update(slices)
        if part["bbox"] is not None:
            bbox = part["bbox"] if bbox is None else [(min(a[0], b[0]), max(a[1], b[1]))
                                                      for a, b in zip(bbox, part["bbox"], strict=True)]
    if len(present) > MAX_CLASSES:
        raise ConfigError(f"the labels hold {len(present)} distinct values; interpolation takes at "
                          f"most {MAX_CLASSES} classes, not instances")
    # a value seeds when it occurs on a slice labelled along that axis (the value sets of a
    # slice were collected from the blocks that found the slice labelled; another block may
    # hold the slice's annotation)
    seeded: set[int] = set()
    for ax in axes:
        for v, slices in values[ax].items():
            if slices & labelled[ax]:
                seeded.add(v)
    return LabelSummary(shape=shape, labelled={ax: tuple(sorted(s)) for ax, s in labelled.items()},
                        seeded=tuple(sorted(seeded)), present=tuple(sorted(present)),
                        bbox=None if bbox is None else tuple(tuple(b) for b in bbox),  # type: ignore[misc]
                        unlabelled=unlabelled)


def summarize_labels(labels: da.Array, config: InterpolationConfig) -> Delayed:
    """Lazy :class:`LabelSummary` of a (Z, Y, X) label volume (one task per chunk, one combine).

    Parameters
    ----------
    labels : (Z, Y, X) integer dask.array.Array
    config : InterpolationConfig
        Its ``axis`` and ``unlabelled`` rule.

    Returns
    -------
    Delayed
        Computes to :class:`LabelSummary`.
    """
    if labels.ndim != 3 or labels.dtype.kind not in "iub":
        raise InputError(f"labels must be a 3-D integer volume, not a {labels.ndim}-D {labels.dtype} one")
    axes = config.axis.indices
    thin = config.axis is Axis.ALL
    shape = tuple(int(n) for n in labels.shape)
    token = tokenize(labels, axes, config.unlabelled, "interpolate-summary")
    part_name, name = f"interpolate-summary-block-{token}", f"interpolate-summary-{token}"
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in labels.chunks]
    dsk: dict[Any, Any] = {}
    deps: list[Any] = [labels]
    keys = []
    for idx in np.ndindex(*labels.numblocks):
        core = tuple((int(starts[a][i]), int(starts[a][i] + labels.chunks[a][i])) for a, i in enumerate(idx))
        if thin:  # in-plane neighbours one voxel beyond the block
            region = tuple(slice(max(0, lo - 1), min(n, hi + 1))
                           for (lo, hi), n in zip(core, shape, strict=True))
            ext = labels[region].rechunk(-1)
            deps.append(ext)
            source: Any = (ext.name, 0, 0, 0)
            origin = tuple(s.start for s in region)
        else:
            source, origin = (labels.name, *idx), tuple(lo for lo, _ in core)
        key = (part_name, *idx)
        dsk[key] = (_block_summary, source, origin, core, axes, config.unlabelled, thin)
        keys.append(key)
    dsk[name] = (_combine, keys, shape, axes, config.unlabelled)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=deps)
    return Delayed(name, graph)


def check_summary(summary: LabelSummary, config: InterpolationConfig, what: str = "LABELS") -> None:
    """Raise the one error that makes ``summary`` impossible to interpolate with ``config``.

    Raises
    ------
    InputError
        No labelled slice; fewer than two seeded classes; a class that occurs but has no seed;
        (``all``) two labelled slices of one axis adjacent; (``shape``) fewer than two labelled
        slices.
    """
    rule = ("every voxel is 0 (Biomedisa's rule: a slice with a non-zero voxel is labelled)"
            if config.unlabelled is None else
            f"every voxel is the unlabelled value {config.unlabelled}")
    names = "zyx"
    if not any(summary.labelled.values()):
        along = "any axis" if config.axis is Axis.ALL else names[config.axis.indices[0]]
        raise InputError(f"{what}: no labelled slice along {along}: {rule}")
    if config.axis is Axis.ALL:
        for ax, slices in summary.labelled.items():
            for a, b in zip(slices[:-1], slices[1:], strict=True):
                if b == a + 1:
                    raise InputError(
                        f"{what}: labelled {names[ax]} slices {a} and {b} are adjacent; "
                        f"{option('axis=Axis.ALL', '--axis all')} needs at least one unlabelled "
                        f"slice between two labelled slices of an axis (label every other slice "
                        f"at most, or use {option('axis=Axis.Z', '--axis z')})")
    missing = [v for v in summary.present if v not in summary.seeded]
    if config.unlabelled is None:
        missing = [v for v in missing if v != 0]  # 0 is the unlabelled background there
    if missing:
        raise InputError(f"{what}: class {missing[0]} has no seed: it occurs only outside the "
                         "labelled slices (label it on a labelled slice, or remove it)")
    if len(summary.seeded) < 2:
        only = summary.seeded[0] if summary.seeded else None
        raise InputError(f"{what}: only class {only} has seeds; interpolation needs at least two "
                         "classes on the labelled slices (e.g. background 0 beside the objects)")
    if config.method.value == "shape":
        (ax,) = config.axis.indices
        if len(summary.labelled[ax]) < 2:
            raise InputError(f"{what}: the shape method needs at least two labelled "
                             f"{names[ax]} slices; found {len(summary.labelled[ax])} (use "
                             f"{option('method=Method.WALK', '--method walk')})")
