"""``sxtdask export-coco``: labelled tomograms → COCO-style ISG patches (images + JSON per split).

The same patches the Mask R-CNN trainer learns from (``sxtdask.train``), written so that
other tools (detectron2, mmdetection, torchvision's references) can train on them too.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ._console import Console
from ._options import output_options

NAME = "export-coco"
EXAMPLES = """\
examples:
  # COCO-style ISG patches of a labelled tomogram (from sxtdask synth):
  sxtdask export-coco cell.gt.zarr --out coco
  # several tomograms, a fifth of them for validation, 128-pixel patches as TIFF:
  sxtdask export-coco a.gt.zarr b.gt.zarr c.gt.zarr d.gt.zarr e.gt.zarr --out all --patch 128 --format tif
"""


def add_parser(sub: Any) -> None:
    """Add the ``export-coco`` sub-command to ``sub`` (argparse sub-parsers)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("data", nargs="+", metavar="DATA",
                     help="OME-Zarr store with labels/ (e.g. from 'sxtdask synth'), or IMAGE,LABELS "
                          "files (MRC/TIFF/...)")
    own.add_argument("--out", required=True, type=Path,
                     help="folder to create: train.json, train/, val.json, val/")
    own.add_argument("--labels", default=None, metavar="NAME",
                     help="ISG instance label image in the stores (default: isg)")
    own.add_argument("--patch", type=int, default=256, help="patch side, pixels")
    own.add_argument("--stride", type=int, default=None,
                     help="patch grid step, pixels (default: the patch side, no overlap)")
    own.add_argument("--min-area", type=int, default=16,
                     help="drop fragments cut by a patch border smaller than this, pixels")
    own.add_argument("--val-fraction", type=float, default=0.2,
                     help="share of the tomograms (not slices) kept for validation")
    own.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    own.add_argument("--format", dest="image_format", choices=("png", "tif"), default="png",
                     help="8-bit image files")
    own.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    sub.add_parser(
        NAME, help="write COCO-style ISG patches (images + train.json/val.json) from labelled "
                   "tomograms",
        parents=[own, output_options()])


def run(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """Write the COCO-style ISG patches of the labelled tomograms, one folder per split."""
    from sxtdask.train import check_patching, export_coco, open_training_data, split_by_tomogram

    t0 = time.perf_counter()
    check_patching(args.patch, args.stride, args.min_area)  # option errors before any reading
    with con.busy(f"opening {len(args.data)} tomogram(s)"):
        volumes = open_training_data(args.data, "isg-maskrcnn", label_name=args.labels)
    train, val = split_by_tomogram(volumes, args.val_fraction, args.seed)
    with con.steps("exporting labelled slices", None) as tick:
        result = export_coco(train, val, args.out, patch=args.patch, stride=args.stride,
                             min_area=args.min_area, image_format=args.image_format,
                             overwrite=args.overwrite, progress=tick)
    for split in ("train", "val"):
        if split in result:
            r = result[split]
            con.say(f"{split}: {r['images']} patches, {r['annotations']} ISG objects from "
                    f"{len(r['tomograms'])} tomogram(s): {', '.join(r['tomograms'])}")
    if "val" not in result:
        con.say("no validation split (give two or more tomograms and --val-fraction > 0)")
    con.say(f"wrote {args.out} ({time.perf_counter() - t0:.1f} s)")
    return result
