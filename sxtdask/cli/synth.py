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
  # cells in a glass capillary, imaged as a full tilt series with photon noise, FBP:
  sxtdask synth cap.mrc --shape 96,160,160 --mount capillary
  # cells on a grid, ±60° (the missing wedge), a low dose, SIRT:
  sxtdask synth grid.mrc --mount grid --tilt 60 --dose 3000 --recon sirt
"""

TOMO_OPTIONS = ("tilt", "tilt_step", "dose", "recon", "iterations")


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
    scene = own.add_argument_group("scene and imaging")
    scene.add_argument("--mount", default="none", choices=("none", "capillary", "grid"),
                       help="none: cells in ice filling the field; capillary: cells in a glass "
                            "tube along y (a bright wall); grid: a layer of ice of varying "
                            "thickness on a flat grid")
    scene.add_argument("--variation", choices=("classic", "wide"), default=None,
                       help="classic: the narrow ranges of sxtdask's first phantoms (default "
                            "for --mount none); wide: every LAC, the PSF, noise, dose and clutter "
                            "drawn per tomogram over wide ranges (default otherwise)")
    scene.add_argument("--imaging", choices=("direct", "tomo"), default=None,
                       help="direct: the LAC volume blurred plus Gaussian noise; tomo: a tilt "
                            "series about y, photon noise, reconstruction (default for a mount, "
                            "or when a tilt-series option is given)")
    scene.add_argument("--tilt", type=float, default=None, metavar="DEG",
                       help="largest tilt, degrees (default 90 = full rotation in a capillary, "
                            "65 on a grid)")
    scene.add_argument("--tilt-step", type=float, default=None, metavar="DEG",
                       help="degrees between projections (default 1)")
    scene.add_argument("--dose", type=float, default=None,
                       help="photons per detector pixel per projection (default: drawn per "
                            "tomogram for --variation wide, else 10000)")
    scene.add_argument("--recon", choices=("fbp", "sirt"), default=None,
                       help="reconstruction: filtered back-projection (default) or SIRT")
    scene.add_argument("--iterations", type=int, default=None, help="SIRT iterations (default 40)")
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
    options = scene_options(args)
    how = f"{options['mount']} mount, {options['imaging']} imaging"
    with con.busy(f"synthesising a {'×'.join(map(str, args.shape))} phantom ({how})"):
        mrc, gt = write_phantom(args.output, shape=args.shape, seed=args.seed,
                                voxel_size_nm=args.voxel_size, overwrite=args.overwrite, **options)
    n = int(open_labels(gt, "isg").max().compute())
    con.say(f"wrote {mrc} and ground truth {gt}: shape {args.shape}, {n} ISGs, seed {args.seed}, "
            f"{how} ({time.perf_counter() - t0:.1f} s)")
    return {"image": str(mrc), "ground_truth": str(gt), "n_isg": n, **options}


def scene_options(args: argparse.Namespace) -> dict[str, Any]:
    """``make_phantom`` keywords from the scene and imaging flags (tilt-series flags imply tomo)."""
    from sxtdask.errors import ConfigError

    given = [name for name in TOMO_OPTIONS if getattr(args, name) is not None]
    imaging = args.imaging or ("tomo" if given or args.mount != "none" else "direct")
    if imaging == "direct" and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(f"{flags}: tilt-series options need --imaging tomo (or leave them out)")
    options: dict[str, Any] = {"mount": args.mount, "imaging": imaging}
    if args.variation is not None:
        options["variation"] = args.variation
    for name in given:
        options[name] = getattr(args, name)
    return options
