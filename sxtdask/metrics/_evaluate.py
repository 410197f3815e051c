"""Evaluation of predicted label images against ground truth: per label image, and per store pair."""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed

from sxtdask.errors import ConfigError, InputError, option
from sxtdask.metrics._coco import coco_metrics
from sxtdask.metrics._instances import (
    Contingency,
    average_precision,
    contingency_table,
    match_contingency,
)
from sxtdask.metrics._morph import morphometrics
from sxtdask.metrics._reduce import align
from sxtdask.metrics._semantic import (
    class_scores,
    confusion_matrix,
    dice_from_counts,
    dice_iou,
)

__all__ = ["LabelKind", "LabelPair", "evaluate_labels", "evaluate_stores", "resolve_labels"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
_LABELS_PAIR = option('labels=["PRED=GT"]', "--labels PRED=GT")
_LABELS_NAME = option('labels=["NAME"]', "--labels NAME")

class LabelKind(enum.Enum):
    """How a label image is evaluated."""

    CELL = "cell"            # 0/1/2: Dice/IoU of cell, cytoplasm, nucleus + morphometrics
    SEMANTIC = "semantic"    # classes: Dice/IoU per class
    INSTANCES = "instances"  # instances: matching, 3-D AP, 2-D COCO


@dataclass(frozen=True)
class LabelPair:
    """A predicted label image, the true one it is compared with, and how.

    ``binarise_pred`` / ``binarise_gt`` compare ``label > 0`` of that side (an instance image
    against a semantic mask, e.g. ``isg-mask=isg``).
    """

    pred: str
    gt: str
    kind: LabelKind
    binarise_pred: bool = False
    binarise_gt: bool = False

    @property
    def name(self) -> str:
        """``NAME``, or ``PRED=GT`` when the names differ."""
        return self.pred if self.pred == self.gt else f"{self.pred}={self.gt}"


def _is_instance_dtype(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize >= 4


def _parse(spec: str) -> tuple[str, str]:
    pred, sep, gt = spec.partition("=")
    pred, gt = pred.strip(), (gt.strip() if sep else pred.strip())
    if not pred or not gt:
        raise ConfigError(f"{option('labels', '--labels')} {spec!r} must be NAME or PRED=GT")
    return pred, gt


def _is_cell_image(classes: dict[int, str]) -> bool:
    """A label image whose metadata names cell parts (1 cytoplasm, 2 nucleus), as every cell
    method writes them, whatever the image is called (``segment --name cell-cascade``).
    """
    return classes.get(1) == "cytoplasm" or classes.get(2) == "nucleus"


def _kind(pred: str, gt: str, dtypes: tuple[np.dtype, np.dtype], instances: Sequence[str],
          cell: bool = False) -> LabelPair:
    if gt == "cell" or pred == "cell" or cell:
        return LabelPair(pred, gt, LabelKind.CELL)
    wide = tuple(_is_instance_dtype(d) for d in dtypes)
    if pred in instances or gt in instances or pred == gt == "isg" or all(wide):
        return LabelPair(pred, gt, LabelKind.INSTANCES)
    return LabelPair(pred, gt, LabelKind.SEMANTIC, binarise_pred=wide[0], binarise_gt=wide[1])


def resolve_labels(
    pred: PathLike, gt: PathLike, labels: Sequence[str] | None = None, *,
    instances: Sequence[str] = (),
) -> list[LabelPair]:
    """Which label images to compare, and how.

    Parameters
    ----------
    pred, gt : str or Path
        OME-Zarr images with ``labels/<name>``.
    labels : sequence of str, optional
        ``NAME`` (the same name in both) or ``PRED=GT``; default every name present in both.
    instances : sequence of str
        Names (of either side) to evaluate as instances whatever their dtype. Otherwise ``cell``
        is a cell image (0/1/2), ``isg`` against ``isg`` and any two 32/64-bit integer images are
        instances, and anything else is semantic (a 32/64-bit side against a narrower one is
        binarised, e.g. ``isg-mask=isg``).

    Raises
    ------
    InputError
        A named label image is missing, or the stores have no name in common.
    """
    from sxtdask.io import label_classes, list_labels, open_labels

    pred_names, gt_names = list_labels(pred), list_labels(gt)
    if labels is None:
        pairs = [(n, n) for n in gt_names if n in pred_names]
        if not pairs:
            raise InputError(
                f"{pred} and {gt} have no label image name in common (prediction: "
                f"{', '.join(pred_names) or 'none'}; ground truth: {', '.join(gt_names) or 'none'}); "
                f"pass {_LABELS_PAIR}")
    else:
        pairs = [_parse(s) for s in labels]
    out = []
    for p, g in pairs:
        for path, name, names in ((pred, p, pred_names), (gt, g, gt_names)):
            if name not in names:
                raise InputError(f"{path}: no label image {name!r}; available: {', '.join(names) or 'none'}")
        dtypes = (open_labels(pred, p).dtype, open_labels(gt, g).dtype)
        cell = _is_cell_image(label_classes(pred, p)) or _is_cell_image(label_classes(gt, g))
        out.append(_kind(p, g, dtypes, instances, cell))
    return out


# --------------------------------------------------------------------------- one label image


#: The parts of a cell label image (0 background, 1 cytoplasm, 2 nucleus) and their values.
CELL_PARTS = {"cell": (1, 2), "cytoplasm": (1,), "nucleus": (2,)}


def _cell_result(cm: np.ndarray, parts: Sequence[str], morph: dict[str, Any],
                 ignore_label: int | None) -> dict[str, Any]:
    """Scores of the cell's ``parts`` (cell: any value > 0, cytoplasm 1, nucleus 2), with the
    morphometrics (none when voxels are ignored: a sparse truth has no volume).
    """
    n = cm.shape[0]
    cell_values = [c for c in range(1, n) if c != ignore_label] if "cell" in parts else []
    classes = {part: class_scores(cm, cell_values if part == "cell" else CELL_PARTS[part])
               for part in parts}
    out: dict[str, Any] = {"kind": LabelKind.CELL.value, "classes": classes, "morphometrics": morph}
    if ignore_label is not None:
        out["ignored_label"] = ignore_label
    return out


def _semantic_result(cm: np.ndarray, ignore_label: int | None) -> dict[str, Any]:
    classes = {str(c): s for c, s in dice_iou(cm).items() if c != ignore_label}
    dice = [s["dice"] for s in classes.values() if s["dice"] is not None]
    out = {"kind": LabelKind.SEMANTIC.value, "classes": classes,
           "mean_dice": float(np.mean(dice)) if dice else None}
    if ignore_label is not None:
        out["ignored_label"] = ignore_label
    return out


def _instance_result(table: Contingency, coco: dict[str, Any] | None,
                     ignore_label: int | None = None) -> dict[str, Any]:
    m = match_contingency(table, 0.5)
    iou = table.pair_iou()
    matched = iou[iou > 0.5]
    overlap = int(table.pair_voxels.sum())
    truth, pred = int(table.gt_sizes.sum()), int(table.pred_sizes.sum())
    return {
        "kind": LabelKind.INSTANCES.value,
        "gt_instances": int(table.gt_ids.size), "pred_instances": int(table.pred_ids.size),
        "match_50": {"tp": m.tp, "fp": m.fp, "fn": m.fn, "precision": m.precision, "recall": m.recall,
                     "f1": m.f1, "mean_matched_iou": float(matched.mean()) if matched.size else None},
        "ap_3d": average_precision(table),
        "foreground": {"dice": dice_from_counts(overlap, truth + pred, empty=None),
                       "iou": overlap / (truth + pred - overlap) if truth + pred else None},
        "coco_2d": coco,
        **({} if ignore_label is None else {"ignored_label": ignore_label}),
    }


def evaluate_labels(
    pred: Any, gt: Any, kind: LabelKind | str, *, spacing_nm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    binarise_pred: bool = False, binarise_gt: bool = False, coco: bool = True,
    scores: Mapping[int, float] | None = None, ignore_label: int | None = None,
    cell_parts: Sequence[str] = tuple(CELL_PARTS),
) -> Delayed:
    """Evaluate one predicted label volume against its ground truth (lazy).

    Parameters
    ----------
    pred, gt : (Z, Y, X) dask.array.Array or ndarray of int
        Same shape; the prediction is rechunked like ``gt``. Nothing is ever loaded whole.
    kind : LabelKind or str
        ``cell``: Dice/IoU of cell (> 0), cytoplasm (1) and nucleus (2), and morphometrics of cell
        and nucleus. ``semantic``: Dice/IoU per class. ``instances``: matching at IoU 0.5
        (precision, recall, F1), 3-D AP over IoU 0.5:0.95, foreground Dice/IoU and 2-D COCO.
    spacing_nm : tuple of 3 float, nanometres
        Voxel size, for volumes (µm³) and surfaces (µm²).
    binarise_pred, binarise_gt : bool
        Semantic only: compare ``label > 0`` of that side.
    coco : bool
        Instances only: also compute the slice-wise COCO metrics (``coco_2d`` is None otherwise).
    scores : mapping of int to float, optional
        Instances only: per predicted instance scores for COCO (default 1.0).
    ignore_label : int, optional
        The true value of voxels that are not annotated (e.g. 2 in NCXT's sparse labels): they
        are left out of every count, on both sides. A predicted instance that lies only there is
        neither a true nor a false positive. Morphometrics are not computed (a sparse truth has
        no volume), and the ignored class is not scored.
    cell_parts : sequence of str
        Cell only: which of ``cell`` (> 0), ``cytoplasm`` (1) and ``nucleus`` (2) the truth
        annotates (a truth of cell and background only: ``("cell",)``).

    Returns
    -------
    dask.delayed.Delayed
        Computes to a JSON-able dict whose ``kind`` names the evaluation.
    """
    try:
        kind = LabelKind(kind)
    except ValueError:
        raise ConfigError(f"kind {kind!r} must be one of {', '.join(k.value for k in LabelKind)}") from None
    unknown = [p for p in cell_parts if p not in CELL_PARTS]
    if unknown or not cell_parts:
        raise ConfigError(f"cell_parts {tuple(cell_parts)!r} must be some of {', '.join(CELL_PARTS)}")
    if kind is LabelKind.CELL and ignore_label is not None:
        cell_parts = tuple(p for p in cell_parts if ignore_label not in CELL_PARTS[p] or p == "cell")
    pred, gt = align(pred, gt)
    token = tokenize(pred, gt, kind, spacing_nm, coco, binarise_pred, binarise_gt,
                     None if scores is None else sorted(scores.items()), ignore_label, tuple(cell_parts))
    name = f"sxtdask-evaluate-{kind.value}-{token}"
    if kind is LabelKind.INSTANCES:
        if ignore_label is not None:  # unannotated voxels count for neither side
            known = gt != ignore_label
            pred, gt = da.where(known, pred, 0).astype(pred.dtype), da.where(known, gt, 0).astype(gt.dtype)
        table = contingency_table(pred, gt)
        c = coco_metrics(pred, gt, scores=scores) if coco else None
        return dask.delayed(_instance_result, pure=True)(table, c, ignore_label, dask_key_name=name)
    cm = confusion_matrix(pred, gt, binarise_pred=binarise_pred, binarise_gt=binarise_gt,
                          ignore_label=ignore_label)
    if kind is LabelKind.SEMANTIC:
        return dask.delayed(_semantic_result, pure=True)(cm, ignore_label, dask_key_name=name)
    morph: dict[str, Any] = {}
    if ignore_label is None:
        morph = {part: morphometrics(pred > 0 if part == "cell" else pred == CELL_PARTS[part][0],
                                     gt > 0 if part == "cell" else gt == CELL_PARTS[part][0], spacing_nm)
                 for part in ("cell", "nucleus") if part in cell_parts}
    return dask.delayed(_cell_result, pure=True)(cm, tuple(cell_parts), morph, ignore_label,
                                                 dask_key_name=name)


# --------------------------------------------------------------------------- two stores


def _open_pair(pred: PathLike, gt: PathLike, pair: LabelPair) -> tuple[Any, Any]:
    from sxtdask.io import open_labels

    p, g = open_labels(pred, pair.pred), open_labels(gt, pair.gt)
    if p.shape != g.shape:
        raise InputError(f"shapes differ: {pred} labels/{pair.pred} is {p.shape}, "
                         f"{gt} labels/{pair.gt} is {g.shape}")
    return p, g


#: Material names (AmiraMesh ``Materials``) that mark unannotated voxels, lower case.
IGNORE_MATERIALS = frozenset({"ignore", "ignored", "unlabelled", "unlabeled", "unannotated", "unknown"})
#: Material names of the background, and the cell parts, as a cell label image numbers them.
_BACKGROUND = frozenset({"void", "exterior", "background", "outside", "ice", "buffer"})
_CELL_VALUES = {"cell": 1, "cytoplasm": 1, "cytosol": 1, "nucleus": 2}


def evaluate_stores(
    pred: PathLike, gt: PathLike, labels: Sequence[str] | None = None, *, instances: Sequence[str] = (),
    coco: bool = True, scores: Mapping[str, Mapping[int, float]] | None = None, compute: bool = True,
    ignore_label: int | None = None,
) -> dict[str, Any] | Delayed:
    """Evaluate the label images of a predicted OME-Zarr store against a ground truth.

    Parameters
    ----------
    pred : str or Path
        An OME-Zarr image with ``labels/`` (``sxtdask segment`` output).
    gt : str or Path
        The truth: an OME-Zarr image with ``labels/`` (``sxtdask synth``'s ``*.gt.zarr``, or an
        image given labels with :func:`sxtdask.io.write_labels`), or one label file of the
        prediction's shape (AmiraMesh ``.labels``/``.am``, TIFF, MRC, npy). An AmiraMesh file's
        ``Materials`` name its values: a material called ``ignore`` (or ``unlabelled``,
        ``unannotated``...) becomes the ignore label, and a cell truth scores only the parts it
        names (``cell`` at 1, ``nucleus`` at 2).
    labels : sequence of str, optional
        ``NAME`` or ``PRED=GT`` (e.g. ``isg-mask=isg``); default the names present in both. With a
        label file, ``NAME`` is the prediction's label image (default ``cell`` when the file's
        materials name a cell, else the prediction's only label image).
    instances : sequence of str
        Label names to evaluate as instances whatever their dtype (see :func:`resolve_labels`).
    coco : bool
        Compute the 2-D slice-wise COCO metrics of instance images.
    scores : mapping of str to (mapping of int to float), optional
        Per prediction label name, the scores of its instances for COCO (default 1.0).
    compute : bool
        Compute now (with the active Dask scheduler or client) and return the dict; False returns
        the lazy :class:`~dask.delayed.Delayed`.
    ignore_label : int, optional
        The truth's value for unannotated voxels, left out of every figure (see
        :func:`evaluate_labels`); default none, or the material named so in a label file.

    Returns
    -------
    dict or Delayed
        ``{"prediction", "ground_truth", "voxel_size_nm", "voxel_size_assumed", "labels": {name:
        result}}``; each result is :func:`evaluate_labels`' dict. The voxel size is the ground
        truth's (the prediction's for a label file).

    Raises
    ------
    InputError
        A store, label file or label image is missing, two label images' shapes differ, or a
        label file's materials do not fit the label image it is compared with.
    """
    from sxtdask.io import open_image

    pred_img = open_image(pred)
    cell_parts: Sequence[str] = tuple(CELL_PARTS)
    if Path(gt).is_dir():
        gt_img = open_image(gt)
        pairs = resolve_labels(pred, gt, labels, instances=instances)
        arrays = {pair.name: _open_pair(pred, gt, pair) for pair in pairs}
        spacing, assumed = gt_img.voxel_size_nm, gt_img.voxel_size_assumed
        if not np.allclose(pred_img.voxel_size_nm, spacing):
            logger.warning("voxel sizes differ: %s %s nm, %s %s nm; using the ground truth's",
                           pred, pred_img.voxel_size_nm, gt, spacing)
    else:
        # a label file annotates the prediction's image: its voxels are the image's
        pair, arrays_, vol = _label_file(pred, gt, labels, instances, pred_img.voxel_size_nm)
        pairs, arrays = [pair], {pair.name: arrays_}
        spacing, assumed = pred_img.voxel_size_nm, pred_img.voxel_size_assumed
        materials = {k: v.lower() for k, v in vol.materials.items()}
        if materials:
            ignore_label, cell_parts = _apply_materials(gt, materials, pair, ignore_label)
    if assumed:
        logger.warning("%s: the voxel size is assumed (1 nm; the data carried none), so volumes "
                       "(µm³) and surfaces (µm²) are not physical; convert with --voxel-size Z,Y,X",
                       gt if Path(gt).is_dir() else pred)
    results = {
        pair.name: evaluate_labels(
            *arrays[pair.name], pair.kind, spacing_nm=spacing, binarise_pred=pair.binarise_pred,
            binarise_gt=pair.binarise_gt, coco=coco, scores=(scores or {}).get(pair.pred),
            ignore_label=ignore_label, cell_parts=cell_parts)
        for pair in pairs
    }
    graph = dask.delayed(_report, pure=True)(str(Path(pred)), str(Path(gt)), list(spacing), assumed,
                                              results,
                                              dask_key_name=f"sxtdask-evaluate-report-{tokenize(results)}")
    return graph.compute() if compute else graph


def _label_file(
    pred: PathLike, gt: PathLike, labels: Sequence[str] | None, instances: Sequence[str],
    voxel_size_nm: tuple[float, float, float],
) -> tuple[LabelPair, tuple[Any, Any], Any]:
    """The pair, the (prediction, truth) arrays and the truth's :class:`~sxtdask.io.Volume`, for a
    truth given as one label file.
    """
    import dask.array as da

    from sxtdask.io import list_labels, open_labels, open_volume

    vol = open_volume(gt, voxel_size_nm=voxel_size_nm)
    names = list_labels(pred)
    materials = {k: v.lower() for k, v in vol.materials.items()}
    if labels is not None:
        if len(labels) != 1:
            raise ConfigError(f"{gt} is one label file: give one {_LABELS_NAME} (the prediction's label "
                              f"image), not {len(labels)}")
        name = _parse(labels[0])[0]
    elif "cell" in materials.values() and "cell" in names:
        name = "cell"
    elif len(names) == 1:
        name = names[0]
    else:
        raise InputError(f"{pred} has the label images {', '.join(names) or 'none'}: say which one "
                         f"{gt} is the truth of with {_LABELS_NAME}")
    if name not in names:
        raise InputError(f"{pred}: no label image {name!r}; available: {', '.join(names) or 'none'}")
    p = open_labels(pred, name)
    if tuple(p.shape) != tuple(vol.shape):
        raise InputError(f"shapes differ: {pred} labels/{name} is {tuple(p.shape)}, {gt} is {vol.shape}")
    if vol.dtype.kind not in "biu":
        raise InputError(f"{gt}: a label file holds integers; it holds {vol.dtype}")
    g = da.from_array(vol, chunks=p.chunks, asarray=True, name=f"truth-{tokenize(vol)}")
    from sxtdask.io import label_classes

    pair = _kind(name, Path(gt).name, (p.dtype, vol.dtype), instances,
                 _is_cell_image(label_classes(pred, name)))
    return pair, (p, g), vol


def _apply_materials(
    gt: PathLike, materials: dict[int, str], pair: LabelPair, ignore_label: int | None,
) -> tuple[int | None, tuple[str, ...]]:
    """The ignore label and cell parts that a label file's materials name (checked against the
    cell image's values 0 background, 1 cytoplasm, 2 nucleus).
    """
    ignored = [v for v, n in materials.items() if n in IGNORE_MATERIALS]
    if ignore_label is None and ignored:
        ignore_label = ignored[0]
        logger.info("%s: material %r (value %d) marks unannotated voxels; they are ignored",
                    gt, materials[ignore_label], ignore_label)
    if pair.kind is not LabelKind.CELL:
        return ignore_label, tuple(CELL_PARTS)
    parts = []
    for value, name in sorted(materials.items()):
        if value == ignore_label:
            continue
        if name in _BACKGROUND and value == 0:
            continue
        want = _CELL_VALUES.get(name)
        if want != value:
            raise InputError(
                f"{gt}: material {name!r} has the value {value}, but a cell label image has 0 "
                "background, 1 cytoplasm (or the whole cell), 2 nucleus; evaluate it as classes "
                f"with {option('labels', '--labels')} and a renumbered truth")
        parts.append("nucleus" if name == "nucleus" else "cytoplasm" if name in ("cytoplasm", "cytosol")
                     else "cell")
    if "nucleus" in parts and "cytoplasm" not in parts and "cell" in parts:
        parts.append("cytoplasm")  # cell at 1 beside a nucleus at 2: 1 is the cytoplasm
    return ignore_label, tuple(dict.fromkeys(["cell", *parts]))


def _report(pred: str, gt: str, spacing: list[float], assumed: bool,
            results: dict[str, Any]) -> dict[str, Any]:
    return {"prediction": pred, "ground_truth": gt, "voxel_size_nm": spacing,
            "voxel_size_assumed": assumed, "labels": results}
