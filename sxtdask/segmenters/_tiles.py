"""Tiled 2-D instance detection: cut a slice into overlapping tiles, detect, stitch one label image.

The reference pipeline (iPA) runs its ISG Mask R-CNN on 256×256 tiles of each slice. An object cut
by a tile border is seen whole in the neighbouring tile when it fits inside the overlap, or in
pieces in every tile when it does not. :func:`stitch_tile_detections` turns the per-tile detections
into one label image of the slice:

1. keep detections with ``score >= score_threshold`` and binarise their masks at
   ``mask >= mask_threshold``;
2. two detections from different tiles are *duplicates* when their masks, restricted to the window
   both tiles saw, have an IoU ``>= iou_merge`` (there a whole view and a cut view of one object
   agree; outside it the cut view has no pixels, so a plain IoU would call them different);
   duplicates chain into groups (union-find);
3. in each group, detections touching an *interior* tile border (one that is not the slice's edge)
   are discarded when a member that does not exists (centre-ness: the view from the tile that
   contains the object whole wins, whatever the scores); the group's mask is the union of the
   members kept, its score their highest — so an object larger than the overlap, cut in every
   tile, is rebuilt from its pieces;
4. groups are painted in descending score order — those with a whole view before those made only
   of cut views (a cut view that matched nothing, because the detector drew it differently, only
   fills pixels no whole view claimed) — and a pixel keeps its first owner; objects left with
   fewer than ``min_pixels`` pixels are dropped; labels are ``1..n`` in the raster order of each
   object's first pixel.

Everything here is NumPy: the detector is any callable (a Mask R-CNN on a worker, a test fake).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import ConfigError

__all__ = [
    "Detections",
    "Tile",
    "raster_relabel",
    "segment_slice_tiled",
    "stitch_tile_detections",
    "tile_grid",
]

logger = logging.getLogger(__name__)

_FAR = np.iinfo(np.int64).max  # border distance of a detection in a tile with no interior border


@dataclass(frozen=True)
class Tile:
    """A half-open window ``[y0, y1) × [x0, x1)`` into a slice, pixels."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the window, pixels."""
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        """The window as ``(slice_y, slice_x)``, for indexing the slice."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


@dataclass(frozen=True, eq=False)
class Detections:
    """The instances a detector found in one tile, in tile coordinates.

    Parameters
    ----------
    masks : (N, h, w) ndarray of float (probabilities in 0..1) or bool
        One mask per detection, the tile's shape. ``(N, 1, h, w)`` (torchvision's Mask R-CNN
        output) is accepted and squeezed.
    scores : (N,) ndarray of float
        Detection confidence, 0..1.
    """

    masks: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        masks = np.asarray(self.masks)
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        scores = np.asarray(self.scores, dtype=np.float32)
        if masks.ndim != 3 or scores.ndim != 1 or scores.shape[0] != masks.shape[0]:
            raise ConfigError(
                f"detections must be masks (N, h, w) with scores (N,); "
                f"got masks {masks.shape} and scores {scores.shape}"
            )
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "scores", scores)

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> Detections:
        """No detection in a tile of ``shape`` (h, w)."""
        return cls(np.zeros((0, *shape), dtype=bool), np.zeros(0, dtype=np.float32))


def _positive_int(name: str, value: int, minimum: int = 1) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} ({value!r}) must be an integer") from None
    if v < minimum:
        raise ConfigError(f"{name} ({v}) must be at least {minimum}")
    return v


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts on one axis: every ``stride``, the last one shifted back to end at the edge."""
    if length <= tile:
        return [0]
    n = -(-(length - tile) // stride) + 1
    return [min(i * stride, length - tile) for i in range(n)]


def tile_grid(shape: tuple[int, int], tile: int = 256, overlap: int = 32) -> list[Tile]:
    """Overlapping tiles covering a 2-D slice.

    Parameters
    ----------
    shape : (int, int)
        ``(Y, X)`` of the slice, pixels.
    tile : int
        Tile edge, pixels. Along an axis at least ``tile`` long every tile is exactly ``tile``
        long; along a shorter axis the one tile spans the axis (the caller pads if its detector
        needs a fixed size).
    overlap : int
        Least overlap of neighbouring tiles, pixels (``0 <= overlap < tile``). Tiles start every
        ``tile - overlap`` pixels; the last row/column is shifted back to end at the slice's edge
        (so it overlaps its neighbour more), never padded beyond it.

    Returns
    -------
    list of Tile
        Row-major (y, then x), every tile the same shape ``(min(Y, tile), min(X, tile))``.

    Examples
    --------
    >>> [(t.y0, t.x0, t.y1, t.x1) for t in tile_grid((100, 300), tile=128, overlap=16)]
    [(0, 0, 100, 128), (0, 112, 100, 240), (0, 172, 100, 300)]
    """
    if len(shape) != 2:
        raise ConfigError(f"shape {tuple(shape)} must be a 2-D slice shape (Y, X)")
    ny, nx = (_positive_int(f"slice size along {a}", s) for a, s in zip("yx", shape, strict=True))
    tile = _positive_int("tile", tile)
    overlap = _positive_int("overlap", overlap, minimum=0)
    if overlap >= tile:
        raise ConfigError(f"overlap ({overlap}) must be smaller than the tile size ({tile})")
    ty, tx = min(ny, tile), min(nx, tile)
    return [
        Tile(y0, x0, y0 + ty, x0 + tx)
        for y0 in _starts(ny, tile, tile - overlap)
        for x0 in _starts(nx, tile, tile - overlap)
    ]


@dataclass(frozen=True, eq=False)
class _Kept:
    """Detections that passed the thresholds, all tiles together, in slice coordinates.

    ``boxes`` (M, 4) are ``y0, x0, y1, x1`` (half-open), ``crops`` the binary masks cut to their
    box, ``tile`` the index of each detection's tile, ``border`` its distance in pixels to the
    nearest interior border of that tile (0: touching it; ``_FAR``: the tile has none).
    """

    boxes: np.ndarray
    crops: list[np.ndarray]
    scores: np.ndarray
    tile: np.ndarray
    border: np.ndarray

    def crop(self, k: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Detection ``k``'s mask over the slice window ``[y0, y1) × [x0, x1)`` inside its box."""
        by, bx = self.boxes[k, 0], self.boxes[k, 1]
        return self.crops[k][y0 - by : y1 - by, x0 - bx : x1 - bx]


def _mask_boxes(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes ``(N, 4)`` of ``(N, h, w)`` binary masks, and which masks are non-empty."""
    rows, cols = np.any(binary, axis=2), np.any(binary, axis=1)
    h, w = binary.shape[1:]
    boxes = np.stack(
        [rows.argmax(1), cols.argmax(1), h - rows[:, ::-1].argmax(1), w - cols[:, ::-1].argmax(1)],
        axis=1,
    ).astype(np.int64)
    return boxes, np.any(rows, axis=1)


def _border_distance(boxes: np.ndarray, windows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels between each box and the nearest interior border of its tile window (both (M, 4))."""
    ny, nx = shape
    gaps = np.stack(
        [
            np.where(windows[:, 0] > 0, boxes[:, 0] - windows[:, 0], _FAR),
            np.where(windows[:, 1] > 0, boxes[:, 1] - windows[:, 1], _FAR),
            np.where(windows[:, 2] < ny, windows[:, 2] - boxes[:, 2], _FAR),
            np.where(windows[:, 3] < nx, windows[:, 3] - boxes[:, 3], _FAR),
        ],
        axis=1,
    )
    return gaps.min(axis=1)


def _collect(
    shape: tuple[int, int],
    tiles: Sequence[Tile],
    detections: Sequence[Detections],
    score_threshold: float,
    mask_threshold: float,
) -> _Kept:
    """Threshold every tile's detections and move them into slice coordinates."""
    boxes, crops, scores, tile_of = [], [], [], []
    for t, (win, det) in enumerate(zip(tiles, detections, strict=True)):
        if det.masks.shape[1:] != win.shape:
            raise ConfigError(
                f"detection masks of tile {t} have shape {det.masks.shape[1:]}, "
                f"but the tile is {win.shape}"
            )
        sel = np.flatnonzero(det.scores >= score_threshold)
        binary = det.masks[sel] >= mask_threshold
        b, nonempty = _mask_boxes(binary)
        for k in np.flatnonzero(nonempty):
            y0, x0, y1, x1 = b[k]
            crops.append(binary[k, y0:y1, x0:x1])
        boxes.append(b[nonempty] + np.array([win.y0, win.x0, win.y0, win.x0]))
        scores.append(det.scores[sel][nonempty])
        tile_of.append(np.full(int(nonempty.sum()), t, dtype=np.int64))
    windows = np.array([[w.y0, w.x0, w.y1, w.x1] for w in tiles], dtype=np.int64).reshape(-1, 4)
    box_arr = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int64)
    tile_arr = np.concatenate(tile_of) if tile_of else np.zeros(0, np.int64)
    border = _border_distance(box_arr, windows[tile_arr], shape)
    score_arr = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    return _Kept(box_arr, crops, score_arr, tile_arr, border)


def _candidate_pairs(kept: _Kept, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of detections from different tiles whose boxes intersect."""
    b = kept.boxes
    # only detections reaching into another tile's window can have a duplicate
    reach = (
        (b[:, None, 0] < windows[None, :, 2]) & (windows[None, :, 0] < b[:, None, 2])
        & (b[:, None, 1] < windows[None, :, 3]) & (windows[None, :, 1] < b[:, None, 3])
    )
    reach[np.arange(b.shape[0]), kept.tile] = False
    s = np.flatnonzero(reach.any(axis=1))
    bs, ts = b[s], kept.tile[s]
    hit = (
        (bs[:, None, 0] < bs[None, :, 2]) & (bs[None, :, 0] < bs[:, None, 2])
        & (bs[:, None, 1] < bs[None, :, 3]) & (bs[None, :, 1] < bs[:, None, 3])
        & (ts[:, None] != ts[None, :])
    )
    i, j = np.nonzero(np.triu(hit, k=1))
    return s[i], s[j]


def _shared_iou(kept: _Kept, windows: np.ndarray, i: int, j: int) -> float:
    """IoU of detections ``i`` and ``j`` on the window both of their tiles saw."""
    wi, wj, bi, bj = windows[kept.tile[i]], windows[kept.tile[j]], kept.boxes[i], kept.boxes[j]
    shared = np.r_[np.maximum(wi[:2], wj[:2]), np.minimum(wi[2:], wj[2:])]
    inside = []
    for k, bk in ((i, bi), (j, bj)):
        lo, hi = np.maximum(bk[:2], shared[:2]), np.minimum(bk[2:], shared[2:])
        inside.append(int(kept.crop(k, *lo, *hi).sum()) if np.all(lo < hi) else 0)
    lo, hi = np.maximum(bi[:2], bj[:2]), np.minimum(bi[2:], bj[2:])
    inter = int(np.count_nonzero(kept.crop(i, *lo, *hi) & kept.crop(j, *lo, *hi)))
    union = inside[0] + inside[1] - inter
    return inter / union if union else 0.0


def _duplicate_groups(kept: _Kept, windows: np.ndarray, iou_merge: float) -> np.ndarray:
    """Group index ``(M,)`` of every detection: duplicates across tiles chained by union-find."""
    m = kept.scores.size
    ci, cj = _candidate_pairs(kept, windows)
    dup = np.array([_shared_iou(kept, windows, a, b) >= iou_merge for a, b in zip(ci, cj, strict=True)], bool)
    graph = coo_matrix((np.ones(int(dup.sum()), np.int8), (ci[dup], cj[dup])), shape=(m, m))
    return connected_components(graph, directed=False)[1]


def _select_members(kept: _Kept, group: np.ndarray) -> np.ndarray:
    """Members kept per group: those clear of interior tile borders, where the group has any."""
    touching = kept.border == 0
    has_whole = np.bincount(group, weights=~touching, minlength=group.max(initial=-1) + 1) > 0
    return ~touching | ~has_whole[group]


def _paint_groups(shape: tuple[int, int], kept: _Kept, group: np.ndarray) -> np.ndarray:
    """Paint each group's union mask onto the slice; a pixel keeps its first owner.

    Groups with a whole view (a member clear of interior tile borders) go first, then groups
    made only of cut views; each in descending score (the best member's), ties in tile order.
    So a cut view that matched nothing never takes pixels from a whole view.

    Returns ``(Y, X)`` int32 provisional labels, ``g + 1`` for group ``g``.
    """
    members = np.flatnonzero(_select_members(kept, group))
    members = members[np.argsort(group[members], kind="stable")]
    g = group[members]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    best = np.maximum.reduceat(kept.scores[members], starts) if members.size else np.zeros(0)
    cut_only = kept.border[members[starts]] == 0  # kept members are all cut or all whole
    out = np.zeros(shape, dtype=np.int32)
    for s in np.lexsort((members[starts], -best, cut_only)):
        mem = members[starts[s] : (starts[s + 1] if s + 1 < starts.size else members.size)]
        lo, hi = kept.boxes[mem, :2].min(axis=0), kept.boxes[mem, 2:].max(axis=0)
        mask = np.zeros(hi - lo, dtype=bool)
        for k in mem:
            (y0, x0), (y1, x1) = kept.boxes[k, :2] - lo, kept.boxes[k, 2:] - lo
            mask[y0:y1, x0:x1] |= kept.crops[k]
        region = out[lo[0] : hi[0], lo[1] : hi[1]]
        region[mask & (region == 0)] = g[starts[s]] + 1
    return out


def raster_relabel(
    labels: np.ndarray, min_size: int = 0, dtype: npt.DTypeLike = np.int32
) -> np.ndarray:
    """Drop labels smaller than ``min_size`` pixels, renumber the rest ``1..n`` in raster order.

    Parameters
    ----------
    labels : ndarray of int
        Any shape; 0 is background.
    min_size : int
        Labels covering fewer pixels (voxels) are set to 0.
    dtype : numpy dtype
        Of the result.

    Returns
    -------
    ndarray of ``dtype``
        ``labels``' shape; the label whose first pixel (C order) comes first is 1, and so on.
    """
    flat = labels.ravel()
    nz = np.flatnonzero(flat)
    ids, first, counts = np.unique(flat[nz], return_index=True, return_counts=True)
    keep = counts >= min_size
    ids, first = ids[keep], first[keep]
    lut: np.ndarray = np.zeros(int(flat.max(initial=0)) + 1, dtype=dtype)
    lut[ids[np.argsort(first)]] = np.arange(1, ids.size + 1, dtype=dtype)
    return lut[labels]


def _check_thresholds(**values: float) -> None:
    """Every threshold is a fraction; IoU 0 would merge disjoint masks, so it must be positive."""
    for name, v in values.items():
        low_ok = v > 0 if name == "iou_merge" else v >= 0
        if not (low_ok and v <= 1):
            rule = "in (0, 1]" if name == "iou_merge" else "in [0, 1]"
            raise ConfigError(f"{name} ({v}) must lie {rule}")


def stitch_tile_detections(
    shape: tuple[int, int],
    tiles: Sequence[Tile],
    detections: Sequence[Detections],
    *,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    iou_merge: float = 0.5,
    min_pixels: int = 4,
) -> np.ndarray:
    """One slice's instance labels from the detections of its overlapping tiles.

    Parameters
    ----------
    shape : (int, int)
        ``(Y, X)`` of the slice, pixels.
    tiles : sequence of Tile
        The windows the detections come from (usually :func:`tile_grid`).
    detections : sequence of Detections
        One per tile, in tile coordinates.
    score_threshold : float
        Detections scoring lower are ignored (iPA: 0.5).
    mask_threshold : float
        Mask probabilities at or above it are the object (iPA: 0.5).
    iou_merge : float
        Least IoU, on the window both tiles saw, of two detections from different tiles that
        are one object (in (0, 1]).
    min_pixels : int
        Objects left with fewer pixels after painting are dropped.

    Returns
    -------
    (Y, X) ndarray of int32
        Instance labels ``1..n`` in raster order of each object's first pixel, 0 background.
        See the module docstring for the rules.
    """
    if len(tiles) != len(detections):
        raise ConfigError(f"got {len(detections)} detections for {len(tiles)} tiles; need one each")
    _check_thresholds(
        score_threshold=score_threshold, mask_threshold=mask_threshold, iou_merge=iou_merge
    )
    if min_pixels < 0:
        raise ConfigError(f"min_pixels ({min_pixels}) must not be negative")
    shape = (int(shape[0]), int(shape[1]))
    windows = np.array([[w.y0, w.x0, w.y1, w.x1] for w in tiles], dtype=np.int64).reshape(-1, 4)
    outside = (windows[:, :2] < 0).any(1) | (windows[:, 2:] > shape).any(1)
    outside |= (windows[:, 2:] <= windows[:, :2]).any(1)
    if outside.any():
        raise ConfigError(f"tile {tiles[int(np.argmax(outside))]} must be non-empty and lie "
                          f"inside the slice {shape}")
    kept = _collect(shape, tiles, detections, score_threshold, mask_threshold)
    if kept.scores.size == 0:
        return np.zeros(shape, dtype=np.int32)
    group = _duplicate_groups(kept, windows, iou_merge)
    labels = raster_relabel(_paint_groups(shape, kept, group), min_pixels)
    logger.debug(
        "stitched %d detections from %d tiles into %d objects",
        kept.scores.size, len(tiles), int(labels.max(initial=0)),
    )
    return labels


def segment_slice_tiled(
    slice2d: np.ndarray,
    detect: Callable[[np.ndarray], Detections] | None,
    *,
    tile: int = 256,
    overlap: int = 32,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    iou_merge: float = 0.5,
    min_pixels: int = 4,
    batch: Callable[[np.ndarray], Sequence[Detections]] | None = None,
) -> np.ndarray:
    """Instance labels of one slice: tile it, detect in every tile, stitch.

    Parameters
    ----------
    slice2d : (Y, X) ndarray
        The slice, already normalised as the detector expects.
    detect : callable, ``(h, w) ndarray -> Detections``
        The detector, called once per tile (``None`` when ``batch`` is given).
    tile, overlap : int
        Tile edge and least overlap, pixels (:func:`tile_grid`). Objects up to ``overlap``
        pixels across are always seen whole in some tile; larger ones are rebuilt from pieces.
    score_threshold, mask_threshold, iou_merge, min_pixels
        As in :func:`stitch_tile_detections`.
    batch : callable, ``(T, h, w) ndarray -> sequence of T Detections``, optional
        A batched detector, called once with all tiles of the slice stacked (every tile has
        the same shape); used instead of ``detect``.

    Returns
    -------
    (Y, X) ndarray of int32
        Instance labels ``1..n`` in raster order, 0 background.
    """
    image = np.asarray(slice2d)
    if image.ndim != 2:
        raise ConfigError(f"slice2d must be 2-D (Y, X); got shape {image.shape}")
    tiles = tile_grid(image.shape, tile, overlap)
    crops = [image[t.slices] for t in tiles]
    if batch is not None:
        dets = list(batch(np.stack(crops)))
    elif detect is not None:
        dets = [detect(c) for c in crops]
    else:
        raise ConfigError("one of detect or batch must be given; got neither")
    return stitch_tile_detections(
        image.shape, tiles, dets, score_threshold=score_threshold,
        mask_threshold=mask_threshold, iou_merge=iou_merge, min_pixels=min_pixels,
    )
