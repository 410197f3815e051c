"""2-D slice-wise COCO segmentation metrics (pycocotools ``COCOeval``) of 3-D instance images.

Every z-slice is a COCO image and every (slice, instance) cross-section an object of one category,
as a Mask R-CNN trained on slices sees them. Cross-sections are run-length encoded block by block
(a slab of whole slices, about one chunk's worth, at a time), so only the small RLE annotations are gathered into the one
task that runs ``COCOeval``.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sxtdask.metrics._reduce import align

__all__ = ["COCO_STATS", "block_annotations", "coco_annotations", "coco_evaluate", "coco_metrics",
           "slice_rles"]

logger = logging.getLogger(__name__)

COCO_STATS: tuple[str, ...] = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "ar_1", "ar_10", "ar_100", "ar_small", "ar_medium", "ar_large",
)
"""Names of ``COCOeval.stats`` in order: AP@[.50:.95], AP@.50, AP@.75, AP by area, AR@1/10/100,
AR@100 by area (COCO's area ranges, in pixels²)."""

_CATEGORY = 1


def slice_rles(labels: np.ndarray) -> list[tuple[int, dict[str, Any], int]]:
    """Compressed COCO RLEs of every instance in one 2-D label image.

    Runs are found from the column-major positions of each label's pixels (no mask per instance
    is made; like pycocotools, no empty run is written at the end) and compressed by
    ``pycocotools.mask.frPyObjects``, so each RLE equals
    ``mask.encode(np.asfortranarray(labels == label))``.

    Parameters
    ----------
    labels : (H, W) integer ndarray
        0 background.

    Returns
    -------
    list of (label, rle, area)
        One per label present, ascending; ``rle`` has ``size`` [H, W] and bytes ``counts``.
    """
    h, w = labels.shape
    flat = labels.ravel(order="F")
    pos = np.flatnonzero(flat)
    if pos.size == 0:
        return []
    values = flat[pos]
    order = np.argsort(values, kind="stable")  # positions stay ascending within a label
    pos, values = pos[order], values[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    out = []
    for a, b in zip(starts, np.r_[starts[1:], pos.size]):
        p = pos[a:b]
        breaks = np.flatnonzero(np.diff(p) != 1) + 1
        edges = np.empty(2 * (breaks.size + 1), dtype=np.int64)
        edges[0::2] = p[np.r_[0, breaks]]
        edges[1::2] = p[np.r_[breaks - 1, p.size - 1]] + 1
        counts = np.diff(np.r_[0, edges, h * w] if edges[-1] < h * w else np.r_[0, edges])
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
        out.append((int(values[a]), rle, int(p.size)))
    return out


def block_annotations(block: np.ndarray, z0: int) -> list[dict[str, Any]]:
    """COCO annotations (no ``id`` yet) of the cross-sections in a slab of whole slices.

    Parameters
    ----------
    block : (z, H, W) integer ndarray
        Whole slices ``z0 .. z0 + z - 1`` of an instance image.
    z0 : int
        Global index of the first slice; it is the COCO ``image_id``.
    """
    anns = []
    for k in range(block.shape[0]):
        for label, rle, area in slice_rles(block[k]):
            anns.append({"image_id": z0 + k, "category_id": _CATEGORY, "label": label,
                         "segmentation": rle, "area": area, "iscrowd": 0})
    return anns


def coco_annotations(labels: da.Array, name: str) -> list[Delayed]:
    """One delayed :func:`block_annotations` per slab of whole slices of ``labels``.

    ``labels`` is rechunked to slabs of whole slices holding about as many voxels as one of its
    chunks (at least one slice, at most the chunk depth).
    """
    cz, cy, cx = labels.chunksize
    depth = max(1, min(cz, cz * cy * cx // (labels.shape[1] * labels.shape[2])))
    slabs = labels.rechunk((depth, -1, -1))
    z0 = np.r_[0, np.cumsum(slabs.chunks[0])[:-1]]
    task = dask.delayed(block_annotations, pure=True)
    blocks = slabs.to_delayed()
    return [task(blocks[i, 0, 0], int(z0[i]), dask_key_name=(name, i)) for i in range(blocks.shape[0])]


def _dataset(anns: list[dict[str, Any]], n_slices: int, shape: tuple[int, int]) -> dict[str, Any]:
    images = [{"id": z, "height": shape[0], "width": shape[1]} for z in range(n_slices)]
    return {"images": images, "categories": [{"id": _CATEGORY, "name": "object"}],
            "annotations": anns}


def _run_cocoeval(gt: list[dict[str, Any]], dt: list[dict[str, Any]], n_slices: int,
                  shape: tuple[int, int]) -> np.ndarray:
    """``COCOeval(iouType="segm").stats`` for prepared annotation lists (pycocotools' prints logged)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        coco_gt = COCO()
        coco_gt.dataset = _dataset(gt, n_slices, shape)
        coco_gt.createIndex()
        if dt:
            coco_dt = coco_gt.loadRes(dt)
        else:  # loadRes refuses an empty list
            coco_dt = COCO()
            coco_dt.dataset = _dataset([], n_slices, shape)
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.imgIds = list(range(n_slices))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.debug("pycocotools:\n%s", text.getvalue())
    return np.asarray(ev.stats, dtype=np.float64)


def coco_evaluate(
    gt_parts: list[list[dict[str, Any]]], pred_parts: list[list[dict[str, Any]]], n_slices: int,
    shape: tuple[int, int], scores: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """Run ``COCOeval`` (segm) on gathered block annotations.

    Parameters
    ----------
    gt_parts, pred_parts : list of lists of dict
        :func:`block_annotations` of the ground truth and the prediction.
    n_slices : int
        Number of z-slices (COCO images ``0 .. n_slices - 1``).
    shape : (H, W)
        Slice shape.
    scores : mapping of int to float, optional
        Score of each predicted instance (by label); 1.0 for every cross-section when None.

    Returns
    -------
    dict
        Each :data:`COCO_STATS` name (None where COCO reports -1: nothing to score), plus
        ``gt_objects``, ``pred_objects`` and ``slices``.
    """
    gt = [dict(a, id=i, bbox=mask_utils.toBbox(a["segmentation"]).tolist())
          for i, a in enumerate((a for part in gt_parts for a in part), start=1)]
    dt = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
           "score": 1.0 if scores is None else float(scores.get(a["label"], 0.0))}
          for part in pred_parts for a in part]
    n_dt = len(dt)
    stats = _run_cocoeval(gt, dt, n_slices, shape)
    out: dict[str, Any] = {k: (None if v < 0 else float(v)) for k, v in zip(COCO_STATS, stats)}
    out.update(gt_objects=len(gt), pred_objects=n_dt, slices=n_slices)
    return out


def coco_metrics(pred: Any, gt: Any, *, scores: Mapping[int, float] | None = None) -> Delayed:
    """2-D slice-wise COCO segmentation metrics of two instance images (lazy).

    Parameters
    ----------
    pred, gt : (Z, Y, X) dask.array.Array or ndarray of int
        Predicted and true instance labels, 0 background.
    scores : mapping of int to float, optional
        Confidence of each predicted instance (label → score); every cross-section of an instance
        gets its score. Default 1.0 for all (COCOeval then keeps the predictions' raster order).

    Returns
    -------
    dask.delayed.Delayed
        Computes to the dict of :func:`coco_evaluate`: ``map`` is mAP@[.50:.95], ``map_50``
        mAP@.50 and ``ar_100`` recall@100, comparable with the figures a 2-D Mask R-CNN reports.
    """
    pred, gt = align(pred, gt)
    token = tokenize(pred, gt, None if scores is None else sorted(scores.items()))
    gt_parts = coco_annotations(gt, f"sxtdask-evaluate-coco-rle-gt-{token}")
    pred_parts = coco_annotations(pred, f"sxtdask-evaluate-coco-rle-pred-{token}")
    task = dask.delayed(coco_evaluate, pure=True)
    return task(gt_parts, pred_parts, gt.shape[0], tuple(gt.shape[1:]), scores,
                dask_key_name=f"sxtdask-evaluate-cocoeval-{token}")
