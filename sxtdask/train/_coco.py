"""COCO-style 2-D patches of labelled tomograms: what the Mask R-CNN trains on and what
``sxtdask export-coco`` writes.

Every labelled slice of a tomogram is cut into square patches on the grid the segmenter tiles
slices with at inference (:func:`sxtdask.segmenters.tile_grid`: ``patch``-sized windows every
``stride`` pixels, the last row and column shifted back to end at the slice's edge; along an axis
shorter than ``patch`` the one window spans it). A patch is kept when it holds at least one object.

Objects: where the cross-section of one 3-D granule (one instance ID) falls in a patch it is one
COCO object; a cross-section that the patch cuts into pieces, or that is itself in pieces, gives
one object per 2-D connected component (8-connected). Components that touch the patch's border
and have fewer than ``min_area`` pixels — slivers of a granule that lies mostly in the next patch
— are dropped; whole components are kept whatever their size, so the objects are exactly the
label image's cross-sections minus those slivers.

Images are prepared as the Mask R-CNN sees them at inference
(:func:`sxtdask.segmenters.prepare_maskrcnn_slices`: LAC × 33.33 clipped to [0, 1]);
exported files hold that scaled to 8 bit (``round(x * 255)``). The validation split's patches
(``val.json``) are the ones the trainer validates on (at most ``val_patches`` of them).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._fs import atomic_directory
from ..errors import ConfigError
from ._data import TrainingVolume

__all__ = [
    "CATEGORY",
    "IMAGE_FORMATS",
    "PatchObject",
    "PatchRef",
    "coco_annotation",
    "coco_dataset",
    "coco_segm_metrics",
    "export_coco",
    "iter_patches",
    "patch_grid",
    "patch_objects",
    "read_patch",
]

logger = logging.getLogger(__name__)

#: The one COCO category (id 1).
CATEGORY = {"id": 1, "name": "isg", "supercategory": "organelle"}
#: Image file formats export-coco writes (8-bit grayscale).
IMAGE_FORMATS = ("png", "tif")
#: ``COCOeval.stats`` entries reported as validation metrics (name → index).
_STATS = {"map": 0, "map_50": 1, "ar_100": 8}


@dataclass(frozen=True)
class PatchObject:
    """One COCO object: a 2-D connected component of one instance inside a patch.

    Attributes
    ----------
    instance_id : int
        The granule's ID in the label volume.
    mask : (h, w) bool ndarray
        The component, in patch coordinates.
    bbox : (x, y, width, height)
        COCO box, pixels (``x + width`` is one past the last column).
    area : int
        Pixels.
    """

    instance_id: int
    mask: np.ndarray
    bbox: tuple[int, int, int, int]
    area: int


@dataclass(frozen=True)
class PatchRef:
    """Where a patch lies: volume ``volume`` (an index), slice ``z``, window ``[y0, y1) × [x0, x1)``."""

    volume: int
    z: int
    y0: int
    x0: int
    y1: int
    x1: int


def check_patching(patch: int, stride: int | None, min_area: int) -> int:
    """Validate the patch options; return the stride (default: ``patch``, no overlap)."""
    if not isinstance(patch, int) or patch < 16:
        raise ConfigError(f"patch ({patch!r}) must be an integer of at least 16 pixels")
    stride = patch if stride is None else stride
    if not isinstance(stride, int) or not 1 <= stride <= patch:
        raise ConfigError(f"stride ({stride!r}) must be between 1 and the patch size ({patch})")
    if not isinstance(min_area, int) or min_area < 0:
        raise ConfigError(f"min_area ({min_area!r}) must be a non-negative integer")
    return stride


def patch_objects(labels: np.ndarray, min_area: int) -> list[PatchObject]:
    """The COCO objects of a 2-D instance-label patch (see the module notes).

    Parameters
    ----------
    labels : (h, w) integer ndarray
        Instance IDs, 0 background.
    min_area : int
        Components touching the patch border with fewer pixels are dropped.

    Returns
    -------
    list of PatchObject
        In the raster order of each component's first pixel.
    """
    from skimage.measure import label, regionprops

    comps = label(np.asarray(labels), background=0, connectivity=2)
    h, w = comps.shape
    out = []
    for region in regionprops(comps):
        y0, x0, y1, x1 = region.bbox
        touches = y0 == 0 or x0 == 0 or y1 == h or x1 == w
        if touches and region.area < min_area:
            continue
        mask = np.zeros((h, w), dtype=bool)
        mask[y0:y1, x0:x1] = region.image
        first = tuple(region.coords[0])
        out.append(PatchObject(int(labels[first]), mask, (x0, y0, x1 - x0, y1 - y0),
                               int(region.area)))
    return out


def iter_patches(volume: TrainingVolume, patch: int, stride: int, min_area: int,
                 ) -> Iterator[tuple[int, list[tuple[Any, np.ndarray]]]]:
    """``(z, [(tile, label patch), ...])`` for every labelled slice, one label slice read at a time.

    The list holds the slice's patches with objects (it may be empty). Slices without labelled
    voxels (found chunk by chunk first) are not read.
    """
    from ..segmenters import tile_grid

    tiles = tile_grid(volume.shape[1:], patch, patch - stride)
    for z in np.flatnonzero(volume.foreground_per_slice()):
        labels = np.asarray(volume.labels[int(z)])
        kept = [(t, labels[t.slices]) for t in tiles]
        yield int(z), [(t, lab) for t, lab in kept if lab.any() and patch_objects(lab, min_area)]


def patch_grid(volumes: Sequence[TrainingVolume], patch: int, stride: int | None = None,
               min_area: int = 16) -> list[PatchRef]:
    """Every patch with objects of ``volumes``, in order (volume, z, y, x)."""
    stride = check_patching(patch, stride, min_area)
    refs: list[PatchRef] = []
    for i, v in enumerate(volumes):
        for z, patches in iter_patches(v, patch, stride, min_area):
            refs.extend(PatchRef(i, z, t.y0, t.x0, t.y1, t.x1) for t, _ in patches)
    return refs


def read_patch(volumes: Sequence[TrainingVolume], ref: PatchRef) -> tuple[np.ndarray, np.ndarray]:
    """The prepared image (float32 in [0, 1]) and the label patch at ``ref``, read lazily."""
    from ..segmenters import prepare_maskrcnn_slices

    v = volumes[ref.volume]
    image = np.asarray(v.image[ref.z, ref.y0:ref.y1, ref.x0:ref.x1])
    labels = np.asarray(v.labels[ref.z, ref.y0:ref.y1, ref.x0:ref.x1])
    return prepare_maskrcnn_slices(image[None])[0], labels


# ------------------------------------------------------------------------------ COCO records


def coco_annotation(obj: PatchObject, image_id: int, ann_id: int) -> dict[str, Any]:
    """The COCO annotation of ``obj`` (RLE segmentation, ``iscrowd`` 0, category ``isg``)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
    counts = rle["counts"]
    assert isinstance(counts, bytes)  # encode() gives bytes; JSON needs text
    rle["counts"] = counts.decode("ascii")
    return {"id": ann_id, "image_id": image_id, "category_id": CATEGORY["id"],
            "segmentation": rle, "area": obj.area, "bbox": [float(v) for v in obj.bbox],
            "iscrowd": 0, "instance_id": obj.instance_id}


def coco_dataset(images: list[dict[str, Any]], annotations: list[dict[str, Any]],
                 info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A COCO instances dataset dict."""
    return {"info": info or {}, "licenses": [], "images": images, "annotations": annotations,
            "categories": [dict(CATEGORY)]}


def coco_segm_metrics(gt: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, float]:
    """COCO segmentation metrics (pycocotools ``COCOeval``) of ``detections`` against ``gt``.

    Parameters
    ----------
    gt : dict
        A COCO dataset (:func:`coco_dataset`).
    detections : list of dict
        ``image_id``, ``category_id``, ``segmentation`` (RLE) and ``score`` each.

    Returns
    -------
    dict
        ``map`` (mAP@[.5:.95]), ``map_50`` (mAP@.5) and ``ar_100`` (recall with 100 detections
        per image); 0 where COCO has nothing to score (it reports -1).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    text = io.StringIO()
    with contextlib.redirect_stdout(text):  # pycocotools prints; library code may not
        coco_gt = COCO()
        # types-pycocotools types ``dataset`` as a TypedDict of every COCO field; COCOeval reads these
        coco_gt.dataset = gt  # type: ignore[assignment]
        coco_gt.createIndex()
        if not detections:
            return dict.fromkeys(_STATS, 0.0)
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.debug("pycocotools:\n%s", text.getvalue())
    return {k: max(float(ev.stats[i]), 0.0) for k, i in _STATS.items()}


# ------------------------------------------------------------------------------ export


def export_coco(train: Sequence[TrainingVolume], val: Sequence[TrainingVolume],
                out: str | os.PathLike[str], *, patch: int = 256, stride: int | None = None,
                min_area: int = 16, image_format: str = "png", overwrite: bool = False,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the training and validation patches as images and one COCO JSON per split.

    Layout: ``out/train.json`` with images in ``out/train/``, and ``out/val.json`` with images in
    ``out/val/`` when ``val`` is not empty. Image ``file_name`` is relative to its split's
    folder; images also record ``tomogram``, ``z``, ``y0`` and ``x0``, and annotations the
    granule's ``instance_id``. Everything is written to a temporary folder beside ``out`` and
    renamed to ``out`` at the end.

    Parameters
    ----------
    train, val : sequence of TrainingVolume
        Tomograms with ISG instance labels, split by tomogram (:func:`split_by_tomogram`).
    out : path
        The folder to create.
    patch, stride : int
        Patch side and grid step, pixels (stride default ``patch``).
    min_area : int
        See :func:`patch_objects`.
    image_format : ``"png"`` or ``"tif"``
    overwrite : bool
        Replace an existing ``out``.
    progress : callable, optional
        ``progress(done, total)`` over labelled slices.

    Returns
    -------
    dict
        ``out``, and per split the numbers of tomograms, images and annotations.
    """
    stride = check_patching(patch, stride, min_area)
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"image format {image_format!r} is not one of {', '.join(IMAGE_FORMATS)}")
    out = Path(out)
    splits = {"train": list(train), "val": list(val)}
    summary: dict[str, Any] = {"out": str(out)}
    # ``out`` is checked first; the patches go to a temporary sibling folder that replaces ``out``
    # only once complete (and is deleted on any error).
    with atomic_directory(out, overwrite, folder=True) as tmp:
        total = sum(int(np.count_nonzero(v.foreground_per_slice())) for v in [*train, *val])
        done = [0]

        def tick() -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        for split, vols in splits.items():
            if not vols:
                continue
            data = _export_split(vols, tmp / split, patch, stride, min_area, image_format, tick)
            data["info"] = _info(patch, stride, min_area, split, vols)
            (tmp / f"{split}.json").write_text(json.dumps(data))
            summary[split] = {"tomograms": [v.name for v in vols], "images": len(data["images"]),
                              "annotations": len(data["annotations"])}
    logger.info("exported COCO patches to %s", out)
    return summary


def _export_split(volumes: Sequence[TrainingVolume], folder: Path, patch: int, stride: int,
                  min_area: int, image_format: str, tick: Callable[[], None]) -> dict[str, Any]:
    folder.mkdir()
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for v in volumes:
        stem = _safe_name(v.name)
        for z, patches in iter_patches(v, patch, stride, min_area):
            image_slice = _prepared_u8(v, z) if patches else None
            for tile, labels in patches:
                name = f"{stem}_z{z:04d}_y{tile.y0:04d}_x{tile.x0:04d}.{image_format}"
                assert image_slice is not None  # made for every z with patches
                _write_image(folder / name, image_slice[tile.slices])
                image_id = len(images) + 1
                h, w = labels.shape
                images.append({"id": image_id, "file_name": name, "height": h, "width": w,
                               "tomogram": v.name, "z": z, "y0": tile.y0, "x0": tile.x0})
                for obj in patch_objects(labels, min_area):
                    anns.append(coco_annotation(obj, image_id, len(anns) + 1))
            tick()
    return coco_dataset(images, anns)


def _prepared_u8(volume: TrainingVolume, z: int) -> np.ndarray:
    """Slice ``z`` prepared as the detector's input, in 8 bit."""
    from ..segmenters import prepare_maskrcnn_slices

    x = prepare_maskrcnn_slices(np.asarray(volume.image[z])[None])[0]
    return np.round(x * 255).astype(np.uint8)


def _write_image(path: Path, image: np.ndarray) -> None:
    if path.suffix == ".png":
        from PIL import Image

        Image.fromarray(image, mode=None).save(path)
    else:
        import tifffile

        tifffile.imwrite(path, image)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "tomogram"


def _info(patch: int, stride: int, min_area: int, split: str,
          volumes: Sequence[TrainingVolume]) -> dict[str, Any]:
    from .._version import __version__
    from ..segmenters import LAC_FACTOR

    return {"description": f"sxtdask export-coco ({split})", "version": __version__,
            "patch": patch, "stride": stride, "min_area": min_area,
            "preprocessing": f"round(clip(LAC * {LAC_FACTOR}, 0, 1) * 255), 8-bit grayscale",
            "tomograms": [v.name for v in volumes]}
