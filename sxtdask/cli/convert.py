"""``sxtdask convert INPUT OUTPUT``: a tomogram file (.mrc/.rec/.am/.tif/.npy) → OME-Zarr."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ._console import Console
from ._options import _voxel_size, add_chunks_option, output_options

NAME = "convert"
EXAMPLES = """\
examples:
  # an MRC tomogram as an OME-Zarr image in chunks of 32 full slices:
  sxtdask convert cell.mrc cell.zarr
  # chunks of 16 slices of 256 x 256 voxels, over an existing image:
  sxtdask convert cell.mrc cell.zarr --chunks 16,256,256 --overwrite
  # a TIFF stack without a voxel size in its header, 25 nm voxels:
  sxtdask convert cell.tif cell-tif.zarr --voxel-size 25
"""


def add_parser(sub: Any) -> None:
    """Add the ``convert`` sub-command to ``sub`` (argparse sub-parsers)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("input", type=Path, metavar="INPUT",
                     help="tomogram file: MRC (.mrc, .st, .ali, .map, ...), AmiraMesh (.am), "
                          ".rec (either, told by its content), TIFF stack (.tif, .tiff) or "
                          "NumPy (.npy)")
    own.add_argument("output", type=Path, metavar="OUTPUT",
                     help="OME-Zarr image to write (e.g. cell.zarr), with its multiscale pyramid")
    add_chunks_option(own)
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
