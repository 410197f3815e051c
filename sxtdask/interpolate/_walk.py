"""Biomedisa's smart interpolation, one block at a time.

A *walk task* takes the seed voxels of its block (its core within the walkable crop), walks from
each of them and returns the hits on everything those walks can reach: its core grown by the
reach (:func:`walk_block`). A *merge task* adds up the hits that the walk tasks of its own and
the neighbouring blocks left on its core and takes, per voxel, the class with the most raw hits
(:func:`merge_block`). Walks are partitioned by seed, so none is walked twice; the image a walk
task reads is its core grown by the reach and one voxel (the weights of the neighbours at the
reach box's faces), plus one for the denoising filter.

The rules, Biomedisa's unless said:

- the image is min–max scaled to 0..255 over the whole volume (then optionally 3×3×3-mean
  denoised); outside the volume it is 0 (Biomedisa's one-voxel zero pad);
- the seeds are the voxels of the labelled slices within the walkable box, of a value >= 0
  other than the unlabelled value; B is a seed's grey value; var the mean of (B − g)² over the
  seed's 3×3 in-plane neighbours of its own class (itself included; a neighbour outside the
  volume counts as grey 0, class 0), clamped to >= 1;
- from each seed, ``walks`` walks of ``steps`` steps; at each step the six face neighbours q get
  the weights exp(−(B − g(q))² / (2 var)) — relative to the seed, not to where the walker stands
  — and one is drawn in proportion; the walker moves there and adds a hit to it unless it would
  leave the walkable box or its seed's reach box, in which case the step is spent in place with
  no hit (Biomedisa's rule at the volume's edge, here also at the reach box's faces: sxtdask's
  rule, which makes a block with a halo of ``reach`` exact);
- a voxel's class is the one with the most raw hits (not normalised by seed counts); ties go to
  the lowest class value (NumPy's argmax over ascending classes, as in Biomedisa); a voxel no
  walk reached, or outside the walkable box, is 0;
- optional curvature smoothing of each class's hit map (``phi += 0.01 κ|∇φ|``, the box's faces
  held at 0) before the argmax; the uncertainty map 1 − (1 − h3/h1)(1 − h2/h1) of the raw counts,
  × 255 as uint8.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ._config import InterpolationConfig
from ._kernels import GREY_STEPS, box_mean, curvature_step, seed_keys, walk_seeds

__all__ = ["Box", "WalkPart", "WalkPlan", "grow", "intersect", "label_dtype", "labels_halo", "merge_block",
           "seed_voxels", "uncertainty", "walk_block"]

logger = logging.getLogger(__name__)

#: A box of global voxel coordinates: per axis [lo, hi).
Box = tuple[tuple[int, int], ...]


def intersect(a: Box, b: Box) -> Box | None:
    """The common part of two boxes, or None."""
    out = tuple((max(x0, y0), min(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b, strict=True))
    return out if all(lo < hi for lo, hi in out) else None


def grow(box: Box, by: int | tuple[int, ...], within: Box) -> Box:
    """``box`` grown by ``by`` voxels per side (one number, or one per axis), within ``within``."""
    by = (by,) * len(box) if isinstance(by, int) else by
    return tuple((max(w0, lo - d), min(w1, hi + d)) for (lo, hi), d, (w0, w1)
                 in zip(box, by, within, strict=True))


def _slices(box: Box, origin: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(lo - o, hi - o) for (lo, hi), o in zip(box, origin, strict=True))


@dataclass(frozen=True)
class WalkPlan:
    """What every walk and merge task of one interpolation needs (small; sent to each task).

    Attributes
    ----------
    shape : (Z, Y, X)
    classes : tuple of int
        The seeded classes, ascending: index i of a hit map is class ``classes[i]``.
    labelled : dict of int to tuple of int
        Per axis, the labelled slices.
    walkable : Box
        The crop within the volume.
    low, high : float
        The image's global minimum and maximum (0..255 scaling).
    config : InterpolationConfig
    """

    shape: tuple[int, int, int]
    classes: tuple[int, ...]
    labelled: dict[int, tuple[int, ...]]
    walkable: Box
    low: float
    high: float
    config: InterpolationConfig

    @property
    def volume(self) -> Box:
        return tuple((0, n) for n in self.shape)

    @property
    def label_dtype(self) -> np.dtype:
        """The smallest unsigned type that holds every class value."""
        return label_dtype(self.classes)


def label_dtype(classes: tuple[int, ...]) -> np.dtype:
    """The smallest unsigned type that holds every class value."""
    top = max(classes) if classes else 0
    return np.dtype(np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32)


@dataclass
class WalkPart:
    """A walk task's result: hit counts per class from global ``origin``, and its seed count."""

    hits: np.ndarray | None
    origin: tuple[int, ...]
    seeds: int


def _grey(image: np.ndarray, plan: WalkPlan) -> np.ndarray:
    """The image on Biomedisa's 0..255 scale (global min–max), float32, optionally denoised."""
    span = plan.high - plan.low
    scale = np.float32(255.0 / span) if span > 0 else np.float32(0.0)
    grey = (image.astype(np.float32) - np.float32(plan.low)) * scale
    if plan.config.denoise:
        grey = box_mean(np.ascontiguousarray(grey))
    return grey


def _near_boundary(plane: np.ndarray, band: int) -> np.ndarray:
    """Pixels within ``band`` (Chebyshev) of a pixel with a 4-neighbour of another value."""
    edge = np.zeros(plane.shape, bool)
    for ax in (0, 1):
        diff = np.diff(plane, axis=ax) != 0
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        edge[tuple(lo)] |= diff
        edge[tuple(hi)] |= diff
    return ndi.maximum_filter(edge, size=2 * band + 1, mode="constant", cval=False) if band else edge


def labels_halo(config: InterpolationConfig) -> int:
    """Voxels of labels a walk task reads beyond its core: the seeds' 3×3 in-plane neighbours, or
    the boundary band (and the edges at its rim) where seeds are thinned.
    """
    if config.seed_stride > 1 and config.boundary_band > 0:
        return config.boundary_band + 1
    return 1


def seed_voxels(labels: np.ndarray, origin: tuple[int, ...], box: Box,
                plan: WalkPlan) -> tuple[np.ndarray, ...]:
    """The seeds inside ``box``: (global coordinates (n, 3), class index, orientation).

    ``labels`` starts at global ``origin`` and covers ``box`` grown by :func:`labels_halo`
    voxels, within the volume.
    """
    cfg = plan.config
    classes = np.asarray(plan.classes)
    stride, band = cfg.seed_stride, cfg.boundary_band
    coords, cls, orient = [], [], []
    for ax, slices in plan.labelled.items():
        inplane = [a for a in range(3) if a != ax]
        for s in slices:
            if not box[ax][0] <= s < box[ax][1]:
                continue
            region = list(box)
            region[ax] = (s, s + 1)
            if stride > 1 and band > 0:  # one more: the edge pixels at the band's rim
                region = list(grow(tuple(region), tuple(0 if a == ax else band + 1 for a in range(3)),
                                   plan.volume))
            plane = np.squeeze(labels[_slices(tuple(region), origin)], axis=ax)
            seed = (plane >= 0) & np.isin(plane, classes)
            if cfg.unlabelled is not None:
                seed &= plane != cfg.unlabelled
            grid = np.meshgrid(*(np.arange(region[a][0], region[a][1]) for a in inplane), indexing="ij")
            if stride > 1:
                keep = (grid[0] % stride == 0) & (grid[1] % stride == 0)
                if band > 0:
                    keep |= _near_boundary(plane, band)
                seed &= keep
            inner = tuple(slice(box[a][0] - region[a][0], box[a][1] - region[a][0]) for a in inplane)
            seed, plane = seed[inner], plane[inner]
            g0, g1 = grid[0][inner][seed], grid[1][inner][seed]
            xyz = np.empty((g0.size, 3), np.int64)
            xyz[:, ax], xyz[:, inplane[0]], xyz[:, inplane[1]] = s, g0, g1
            coords.append(xyz)
            cls.append(np.searchsorted(classes, plane[seed]).astype(np.int64))
            orient.append(np.full(g0.size, ax, np.int64))
    if not coords:
        return np.empty((0, 3), np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(coords), np.concatenate(cls), np.concatenate(orient)


def _seed_weights(grey: np.ndarray, g_origin: tuple[int, ...], labels: np.ndarray,
                  l_origin: tuple[int, ...], seeds: np.ndarray, cls: np.ndarray, orient: np.ndarray,
                  plan: WalkPlan) -> tuple[np.ndarray, np.ndarray]:
    """B and 1 / (2 var) of each seed (var over its own class's in-plane 3×3 neighbours)."""
    classes = np.asarray(plan.classes)
    value = classes[cls]
    b = grey[tuple(seeds[:, a] - g_origin[a] for a in range(3))].astype(np.float64)
    dev = np.zeros(len(seeds))
    count = np.zeros(len(seeds))
    shape = np.asarray(plan.shape)
    first = np.where(orient == 0, 1, 0)  # the seed's in-plane axes, lower first
    second = np.where(orient == 2, 1, 2)
    for n in (-1, 0, 1):
        for o in (-1, 0, 1):
            nb = seeds.copy()
            rows = np.arange(len(seeds))
            nb[rows, first] += n
            nb[rows, second] += o
            inside = np.all((nb >= 0) & (nb < shape), axis=1)
            lab = np.zeros(len(seeds), np.int64)
            g = np.zeros(len(seeds))
            idx = tuple(nb[inside, a] - l_origin[a] for a in range(3))
            lab[inside] = labels[idx]
            g[inside] = grey[tuple(nb[inside, a] - g_origin[a] for a in range(3))]
            same = lab == value  # outside the volume: class 0, grey 0 (Biomedisa's pad)
            dev += np.where(same, (b - g) ** 2, 0.0)
            count += same
    var = np.maximum(dev / np.maximum(count, 1), 1.0)
    return b, 1.0 / (2.0 * var)


def walk_block(image: np.ndarray, image_origin: tuple[int, ...], labels: np.ndarray,
               labels_origin: tuple[int, ...], core: Box, plan: WalkPlan) -> WalkPart:
    """Walk from the seeds of ``core`` and return their hits.

    Parameters
    ----------
    image : (z, y, x) ndarray
        The image over ``core`` grown by :attr:`InterpolationConfig.halo`, within the volume,
        from global ``image_origin``.
    labels : (z, y, x) integer ndarray
        The labels over ``core`` grown by :func:`labels_halo`, within the volume.
    core : Box
        The block's core.
    plan : WalkPlan

    Returns
    -------
    WalkPart
        Hits over the core grown by the reach, within the walkable box (uint16 when they fit).
    """
    cfg = plan.config
    box = intersect(core, plan.walkable)
    if box is None:
        return WalkPart(None, (0, 0, 0), 0)
    seeds, cls, orient = seed_voxels(labels, labels_origin, box, plan)
    if not len(seeds):
        return WalkPart(None, (0, 0, 0), 0)
    grey = _grey(image, plan)
    b, div = _seed_weights(grey, image_origin, labels, labels_origin, seeds, cls, orient, plan)
    # the quantised image over every voxel a walker can stand on and its neighbours, with the
    # zero pad one voxel beyond the volume
    reach_box = grow(box, cfg.reach + 1, tuple((-1, n + 1) for n in plan.shape))
    q = np.zeros(tuple(hi - lo for lo, hi in reach_box), np.uint16)
    inside = intersect(reach_box, plan.volume)
    assert inside is not None
    q_origin = tuple(lo for lo, _ in reach_box)
    part = grey[_slices(inside, image_origin)]
    q[_slices(inside, q_origin)] = np.clip(np.rint(part * np.float32(GREY_STEPS)), 0, 255 * GREY_STEPS)
    del grey, part
    hit_box = grow(box, cfg.reach, plan.walkable)
    h_origin = tuple(lo for lo, _ in hit_box)
    hits = np.zeros((len(plan.classes), *(hi - lo for lo, hi in hit_box)), np.uint32)
    flat = np.ravel_multi_index(tuple(seeds.T), plan.shape).astype(np.uint64)
    keys = seed_keys(cfg.seed, flat, orient)
    walk_seeds(q, np.asarray(q_origin, np.int64), seeds, cls, b, div, keys, cfg.walks, cfg.steps,
               cfg.reach, np.asarray([lo for lo, _ in plan.walkable], np.int64),
               np.asarray([hi for _, hi in plan.walkable], np.int64), hits,
               np.asarray(h_origin, np.int64))
    if hits.size and int(hits.max()) < 2**16:
        hits = hits.astype(np.uint16)  # half the memory while it waits for its merges
    logger.debug("walked %d seeds of block %s", len(seeds), core)
    return WalkPart(hits, h_origin, len(seeds))


def _accumulate(parts: list[WalkPart], box: Box, n_classes: int) -> np.ndarray:
    """The hits of ``parts`` added over ``box``, uint32."""
    acc = np.zeros((n_classes, *(hi - lo for lo, hi in box)), np.uint32)
    origin = tuple(lo for lo, _ in box)
    for part in parts:
        if part.hits is None:
            continue
        own = tuple((o, o + n) for o, n in zip(part.origin, part.hits.shape[1:], strict=True))
        common = intersect(own, box)
        if common is not None:
            source = part.hits[(slice(None), *_slices(common, part.origin))]
            acc[(slice(None), *_slices(common, origin))] += source
    return acc


def uncertainty(hits: np.ndarray) -> np.ndarray:
    """Biomedisa's uncertainty from hit counts (classes first): 1 − (1 − h3/h1)(1 − h2/h1) of the
    three largest counts h1 >= h2 >= h3 (0 where nothing was hit), × 255 as uint8.
    """
    top = np.sort(hits, axis=0)[::-1].astype(np.float32)
    h1 = top[0]
    h2 = top[1] if len(top) > 1 else np.zeros_like(h1)
    h3 = top[2] if len(top) > 2 else np.zeros_like(h1)
    h1 = np.where(h1 == 0, np.float32(1.0), h1)
    u = np.float32(1.0) - (np.float32(1.0) - h3 / h1) * (np.float32(1.0) - h2 / h1)
    return (u * np.float32(255.0)).astype(np.uint8)


def merge_block(parts: list[WalkPart], core: Box, plan: WalkPlan, own: int) -> tuple[Any, ...]:
    """The labels (and uncertainty) of ``core`` from the walk tasks that reach it.

    Parameters
    ----------
    parts : list of WalkPart
        Every walk task whose hits can reach ``core`` (grown by the smoothing iterations).
    core : Box
    plan : WalkPlan
    own : int
        Which of ``parts`` is the block's own walk task (its seed count is reported).

    Returns
    -------
    labels : ndarray of :attr:`WalkPlan.label_dtype`
    uncertainty : uint8 ndarray, or None without ``uncertainty``
    info : dict
        ``seeds`` walked by the block's own walk task.
    """
    cfg = plan.config
    shape = tuple(hi - lo for lo, hi in core)
    out = np.zeros(shape, plan.label_dtype)
    unc = np.zeros(shape, np.uint8) if cfg.uncertainty else None
    info = {"seeds": int(parts[own].seeds) if 0 <= own < len(parts) else 0}
    box = intersect(core, plan.walkable)
    if box is None:
        return out, unc, info
    region = grow(box, cfg.smooth, plan.walkable)
    acc = _accumulate(parts, region, len(plan.classes))
    inner = _slices(box, tuple(lo for lo, _ in region))
    raw = acc[(slice(None), *inner)]
    if cfg.smooth:
        decide = np.empty(raw.shape, np.float32)
        for c in range(len(plan.classes)):
            phi = np.pad(acc[c].astype(np.float32), 1)  # faces beyond the box: Biomedisa's 0
            for _ in range(cfg.smooth):
                phi = curvature_step(phi)
            decide[c] = phi[1:-1, 1:-1, 1:-1][inner]
    else:
        decide = raw
    classes = np.asarray(plan.classes, dtype=plan.label_dtype)
    label = np.where(raw.max(axis=0) > 0, classes[np.argmax(decide, axis=0)], 0)
    out[_slices(box, tuple(lo for lo, _ in core))] = label
    if unc is not None:
        unc[_slices(box, tuple(lo for lo, _ in core))] = uncertainty(raw)
    return out, unc, info
