"""2-D slice-wise COCO segmentation metrics (pycocotools ``COCOeval``) of 3-D instance images.

Every z-slice is a COCO image and every (slice, instance) cross-section an object of one category,
as a Mask R-CNN trained on slices sees them. Each slab of whole slices (about one chunk's worth of
voxels) is run-length encoded and evaluated image by image (``COCOeval.evaluate``) in its own task;
only the small per-image results are gathered into the task that accumulates and summarises them.
"""

from __future__ import annotations

import contextlib
import copy
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

__all__ = ["COCO_STATS", "block_annotations", "block_coco", "coco_accumulate", "coco_metrics", "slice_rles"]

logger = logging.getLogger(__name__)

COCO_STATS: tuple[str, ...] = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "ar_1", "ar_10", "ar_100", "ar_small", "ar_medium", "ar_large",
)
"""Names of ``COCOeval.stats`` in order: AP@[.50:.95], AP@.50, AP@.75, AP by area, AR@1/10/100,
AR@100 by area (COCO's area ranges, in pixels²)."""

_CATEGORY = 1


def slice_rles(labels: np.ndarray) -> list[tuple[int, Mapping[str, Any], int]]:
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
    out: list[tuple[int, Mapping[str, Any], int]] = []
    for a, b in zip(starts, np.r_[starts[1:], pos.size], strict=True):
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


def _slabs(labels: da.Array) -> da.Array:
    """``labels`` rechunked to slabs of whole slices holding about as many voxels as one of its
    chunks (at least one slice, at most the chunk depth).
    """
    cz, cy, cx = labels.chunksize
    depth = max(1, min(cz, cz * cy * cx // (labels.shape[1] * labels.shape[2])))
    return labels.rechunk((depth, -1, -1))


def _dataset(anns: list[dict[str, Any]], image_ids: range, shape: tuple[int, int]) -> dict[str, Any]:
    images = [{"id": z, "height": shape[0], "width": shape[1]} for z in image_ids]
    return {"images": images, "categories": [{"id": _CATEGORY, "name": "object"}], "annotations": anns}


def _cocoeval(gt: list[dict[str, Any]], dt: list[dict[str, Any]], image_ids: range,
              shape: tuple[int, int]) -> COCOeval:
    """A ``COCOeval(iouType="segm")`` of prepared annotations (ids from 1, gt bboxes set)."""
    coco_gt = COCO()
    # types-pycocotools types ``dataset`` as a TypedDict of every COCO field; COCOeval reads these
    coco_gt.dataset = _dataset(gt, image_ids, shape)  # type: ignore[assignment]
    coco_gt.createIndex()
    if dt:
        coco_dt = coco_gt.loadRes(dt)
    else:  # loadRes refuses an empty list
        coco_dt = COCO()
        coco_dt.dataset = _dataset([], image_ids, shape)  # type: ignore[assignment]  # as above
        coco_dt.createIndex()
    ev = COCOeval(coco_gt, coco_dt, iouType="segm")
    ev.params.imgIds, ev.params.catIds = list(image_ids), [_CATEGORY]
    return ev


def block_coco(
    pred: np.ndarray, gt: np.ndarray, z0: int, scores: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """Per-image COCO evaluation (``COCOeval.evaluate``) of one slab of whole slices.

    Parameters
    ----------
    pred, gt : (z, H, W) integer ndarray
        Slices ``z0 .. z0 + z - 1`` of the predicted and the true instance image.
    z0 : int
        Global index of the first slice (COCO image ids are slice indices).
    scores : mapping of int to float, optional
        Score per predicted label (0 for a label it lacks); 1.0 for all when None.

    Returns
    -------
    dict
        ``eval_imgs``: per COCO area range, the slab's ``evalImgs`` in slice order (what
        :func:`coco_accumulate` needs), and ``gt_objects`` / ``pred_objects`` counts.
    """
    gt_anns = [dict(a, id=i, bbox=mask_utils.toBbox(a["segmentation"]).tolist())
               for i, a in enumerate(block_annotations(gt, z0), start=1)]
    dt_anns = [dict(a, score=1.0 if scores is None else float(scores.get(a["label"], 0.0)))
               for a in block_annotations(pred, z0)]
    images = range(z0, z0 + gt.shape[0])
    text = io.StringIO()
    with contextlib.redirect_stdout(text):  # pycocotools prints
        ev = _cocoeval(gt_anns, dt_anns, images, (gt.shape[1], gt.shape[2]))
        ev.evaluate()
    n = len(images)
    per_area = [ev.evalImgs[a * n:(a + 1) * n] for a in range(len(ev.params.areaRng))]
    return {"eval_imgs": per_area, "gt_objects": len(gt_anns), "pred_objects": len(dt_anns)}


def coco_accumulate(parts: list[dict[str, Any]], n_slices: int) -> dict[str, Any]:
    """``COCOeval.accumulate`` and ``summarize`` over the slabs' per-image evaluations.

    ``parts`` are :func:`block_coco` results of consecutive slabs covering slices
    ``0 .. n_slices - 1`` in order; their ``evalImgs`` are joined in COCOeval's (area range, image)
    order, so the result equals one ``COCOeval`` over all slices.

    Returns
    -------
    dict
        Each :data:`COCO_STATS` name (None where COCO reports -1: nothing to score), plus
        ``gt_objects``, ``pred_objects`` and ``slices``.
    """
    ev = COCOeval(iouType="segm")
    ev.params.imgIds, ev.params.catIds = list(range(n_slices)), [_CATEGORY]
    # evaluate() sets _paramsEval, which types-pycocotools does not declare
    ev._paramsEval = copy.deepcopy(ev.params)  # type: ignore[attr-defined]
    n_areas = len(ev.params.areaRng)
    ev.evalImgs = [e for a in range(n_areas) for part in parts for e in part["eval_imgs"][a]]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        ev.accumulate()
        ev.summarize()
    logger.debug("pycocotools:\n%s", text.getvalue())
    out: dict[str, Any] = {k: (None if v < 0 else float(v))
                           for k, v in zip(COCO_STATS, ev.stats, strict=False)}
    out.update(gt_objects=sum(p["gt_objects"] for p in parts),
               pred_objects=sum(p["pred_objects"] for p in parts), slices=n_slices)
    return out


def coco_metrics(pred: Any, gt: Any, *, scores: Mapping[int, float] | None = None) -> Delayed:
    """2-D slice-wise COCO segmentation metrics of two instance images (lazy).

    Each slab of whole slices (about one chunk of voxels) is run-length encoded and evaluated
    image by image (``COCOeval.evaluate``) in its own task; one final task accumulates the small
    per-image results (``COCOeval.accumulate``, ``summarize``), so the figures equal a single
    ``COCOeval`` over all slices.

    Parameters
    ----------
    pred, gt : (Z, Y, X) dask.array.Array or ndarray of int
        Predicted and true instance labels, 0 background.
    scores : mapping of int to float, optional
        Confidence of each predicted instance (label → score); every cross-section of an instance
        gets its score, and a label missing from the mapping scores 0. Default 1.0 for all
        (COCOeval then ranks predictions in raster order: slice, then label).

    Returns
    -------
    dask.delayed.Delayed
        Computes to the dict of :func:`coco_accumulate`: ``map`` is mAP@[.50:.95], ``map_50``
        mAP@.50 and ``ar_100`` recall@100 (at most 100 objects per slice), comparable with the
        figures a 2-D Mask R-CNN reports.
    """
    pred, gt = align(pred, gt)
    token = tokenize(pred, gt, None if scores is None else sorted(scores.items()))
    gt_slabs = _slabs(gt)
    pred_slabs = pred.rechunk(gt_slabs.chunks)
    z0 = np.r_[0, np.cumsum(gt_slabs.chunks[0])[:-1]]
    shared = None if scores is None else dask.delayed(dict(scores), traverse=False,
                                                      name=f"sxtdask-evaluate-coco-scores-{token}")
    task = dask.delayed(block_coco, pure=True)
    g, p = gt_slabs.to_delayed(), pred_slabs.to_delayed()
    parts = [task(p[i, 0, 0], g[i, 0, 0], int(z0[i]), shared,
                  dask_key_name=(f"sxtdask-evaluate-coco-{token}", i))
             for i in range(g.shape[0])]
    return dask.delayed(coco_accumulate, pure=True)(parts, gt.shape[0],
                                                    dask_key_name=f"sxtdask-evaluate-coco-summary-{token}")
