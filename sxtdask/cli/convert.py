"""``sxtdask convert INPUT OUTPUT``: a tomogram file (.mrc/.rec/.am/.tif/.npy) → OME-Zarr."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ._console import Console
from ._options import _triple, _voxel_size, output_options

NAME = "convert"


def add_parser(sub: Any) -> None:
    """Add the ``convert`` sub-command to ``sub`` (argparse sub-parsers)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("input", type=Path)
    own.add_argument("output", type=Path)
    own.add_argument("--chunks", type=_triple, default=None, metavar="Z,Y,X",
                     help="chunk shape (default: 32 slices of the full plane)")
    own.add_argument("--voxel-size", type=_voxel_size, default=None, metavar="Z,Y,X",
                     help="voxel size in nm (Z,Y,X, or one number for isotropic voxels); replaces "
                          "the file's (default: the file's own; a file without one gets 1 nm, "
                          "marked assumed, with a warning)")
    own.add_argument("--overwrite", action="store_true", help="replace an existing output")
    sub.add_parser(NAME, help="tomogram (.mrc/.rec/.am/.tif/.npy) → OME-Zarr",
                   parents=[own, output_options()])


def run(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """Convert the tomogram file ``args.input`` to an OME-Zarr image at ``args.output``."""
    from sxtdask.io import open_image, open_volume, write_image

    t0 = time.perf_counter()
    with open_volume(args.input, voxel_size_nm=args.voxel_size) as vol:
        nslabs = -(-vol.shape[0] // (args.chunks[0] if args.chunks else min(32, vol.shape[0])))
        with con.steps("converting", nslabs) as tick:
            out = write_image(vol, args.output, chunks=args.chunks, overwrite=args.overwrite,
                              progress=tick)
    img = open_image(out)
    voxel = "×".join(f"{v:g}" for v in img.voxel_size_nm)
    con.say(f"wrote {out}: shape {img.data.shape} {img.data.dtype}, voxel {voxel} nm"
            f"{' (assumed: the file has none; --voxel-size gives it)' if img.voxel_size_assumed else ''}"
            f", chunks {img.data.chunksize}, {img.levels} levels ({time.perf_counter() - t0:.1f} s)")
    return {"output": str(out), "shape": img.data.shape, "voxel_size_nm": list(img.voxel_size_nm),
            "voxel_size_assumed": img.voxel_size_assumed}
