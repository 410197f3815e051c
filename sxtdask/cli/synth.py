"""``sxtdask synth OUTPUT``: a synthetic SXT cell (MRC) and its ground truth (``.gt.zarr``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ._console import Console
from ._options import _triple, output_options

NAME = "synth"
EXAMPLES = """\
examples:
  # a small synthetic cell (cell.mrc) and its ground truth (cell.gt.zarr):
  sxtdask synth cell.mrc --shape 32,64,64
  # a larger one, another cell, 25 nm voxels:
  sxtdask synth big.mrc --shape 128,256,256 --seed 7 --voxel-size 25
"""


def add_parser(sub: Any) -> None:
    """Add the ``synth`` sub-command to ``sub`` (argparse sub-parsers)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("output", type=Path, metavar="OUTPUT.mrc",
                     help="the tomogram to write; its ground truth goes beside it as "
                          "OUTPUT.gt.zarr")
    own.add_argument("--shape", type=_triple, default=(128, 256, 256), metavar="Z,Y,X",
                     help="voxels along Z, Y, X")
    own.add_argument("--seed", type=int, default=0,
                     help="random seed: the same seed and shape give the same cell")
    own.add_argument("--voxel-size", type=float, default=30.0, help="voxel size, nanometres")
    own.add_argument("--overwrite", action="store_true",
                     help="replace an existing tomogram and ground truth")
    sub.add_parser(NAME, help="write a synthetic SXT cell (MRC, LAC per voxel: µm⁻¹ × voxel "
                              "size in µm, like real reconstructions) and its ground truth "
                              "(.gt.zarr)",
                   parents=[own, output_options()])


def run(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """Write a synthetic cell (MRC) and its ground truth (``.gt.zarr``)."""
    from sxtdask.io import open_labels
    from sxtdask.phantoms import write_phantom

    t0 = time.perf_counter()
    with con.busy(f"synthesising a {'×'.join(map(str, args.shape))} phantom"):
        mrc, gt = write_phantom(args.output, shape=args.shape, seed=args.seed,
                                voxel_size_nm=args.voxel_size, overwrite=args.overwrite)
    n = int(open_labels(gt, "isg").max().compute())
    con.say(f"wrote {mrc} and ground truth {gt}: shape {args.shape}, {n} ISGs, seed {args.seed} "
            f"({time.perf_counter() - t0:.1f} s)")
    return {"image": str(mrc), "ground_truth": str(gt), "n_isg": n}
