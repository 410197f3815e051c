"""``sxtdask demo``: synth → convert → segment → stats → PNG, on a small phantom.

The demo folder is built beside ``--out`` (a hidden ``.NAME.*.partial`` folder) and moved into
place when complete, so ``--out`` is never half a demo; an existing non-empty ``--out`` is
replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sxtdask.errors import OutputError

from ._cluster import open_cluster
from ._console import Console, write_json
from ._options import _triple, add_device_option, cluster_options, output_options
from .segment import run_segment
from .stats import run_stats

NAME = "demo"
EXAMPLES = """\
examples:
  # the whole pipeline with the bundled U-Nets, in ./sxtdask-demo:
  sxtdask demo
  # a quick one: a small cell, classical ISGs only, in another folder:
  sxtdask demo --method classical --shape 32,64,64 --out demo-small
"""


def add_parser(sub: Any) -> None:
    """Add the ``demo`` sub-command to ``sub`` (argparse sub-parsers)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--out", type=Path, default=Path("sxtdask-demo"),
                     help="folder for the demo's files")
    own.add_argument("--shape", type=_triple, default=(128, 256, 256), metavar="Z,Y,X",
                     help="voxels of the synthetic cell along Z, Y, X")
    own.add_argument("--seed", type=int, default=0, help="random seed of the synthetic cell")
    own.add_argument("--method", default="unet", choices=("unet", "classical"),
                     help="unet: the bundled cell, mito and ISG U-Nets; classical: ISGs only, no "
                          "network")
    add_device_option(own)
    own.add_argument("--overwrite", action="store_true",
                     help="replace an existing, non-empty --out folder")
    sub.add_parser(NAME, help="synth → convert → segment → stats → PNG, on a small phantom",
                   parents=[own, cluster_options(), output_options()])


def _check_out(out: Path, overwrite: bool) -> bool:
    """Refuse an ``--out`` that may not be (re)placed; True if an existing folder is replaced."""
    if not (out.exists() or out.is_symlink()):
        return False
    if not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise OutputError(f"--out {out}: is (or holds) the current folder; give another folder")
    if not overwrite and any(out.iterdir()):
        raise OutputError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
    return True


def run(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """synth → convert → segment → stats → PNG, built aside and moved to ``args.out`` when done."""
    from sxtdask._fs import atomic_directory

    t0 = time.perf_counter()
    out = args.out
    replace = _check_out(out, args.overwrite)  # before anything is made
    try:
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"--out {out}: cannot create its folder ({err.strerror or err})") from err
    with atomic_directory(out, overwrite=replace, folder=True, what="--out") as work:
        result, text = _build(args, con, work, out)
    con.say(f"{text}; {time.perf_counter() - t0:.0f} s in all.\nOutputs in {out}/: phantom.mrc, "
            f"phantom.gt.zarr, phantom.zarr (labels/{', labels/'.join(result.pop('labels'))}), "
            f"isg.csv, run.json, demo.png{result.pop('note')}")
    return result


def _build(args: argparse.Namespace, con: Console, work: Path,
           out: Path) -> tuple[dict[str, Any], str]:
    """The demo's files in ``work`` (named by their final place in ``out`` in messages)."""
    import numpy as np

    from sxtdask._demo import save_figure
    from sxtdask.io import open_image, open_labels, open_volume, write_image
    from sxtdask.metrics import block_contingency, dice_score, instance_outcomes, match_contingency
    from sxtdask.phantoms import write_phantom
    from sxtdask.segmenters import make_segmenter

    unet = args.method == "unet"
    tasks = ("cell", "mito", "isg-instances") if unet else ("isg-instances",)
    segmenter = make_segmenter(tasks, None if unet else "classical", device=args.device,
                               batch_size=8)
    with con.busy("synthesising a phantom"):
        mrc, gt = write_phantom(work / "phantom.mrc", shape=args.shape, seed=args.seed,
                                overwrite=True)
    con.say(f"1/5 synthesised {out / mrc.name} (ground truth {out / gt.name})")
    data = work / "phantom.zarr"
    with open_volume(mrc) as vol, con.steps("converting", 1) as tick:
        write_image(vol, data, overwrite=True, progress=tick)
    con.say(f"2/5 converted to {out / data.name}")
    with open_cluster(args, con) as client:
        report = run_segment(data.absolute(), segmenter, client, con, overwrite=True)
        con.say(f"3/5 segmented {', '.join(tasks)} in {report['chunk_count']} chunks "
                f"({'bundled U-Nets' if unet else 'classical ISG method'})")
        table = run_stats(data, "isg", work / "isg.csv", client, con, overwrite=True)
        con.say(f"4/5 wrote the ISG table {out / 'isg.csv'}")
    report["input"] = str((out / data.name).absolute())  # where it will be, not the build folder
    write_json(work / "run.json", report)
    truth = np.asarray(open_labels(gt, "isg"))
    pred = np.asarray(open_labels(data, "isg"))
    img = open_image(data)
    z = int(np.argmax(np.count_nonzero(pred, axis=(1, 2))))
    layers: dict[str, Any] = {}
    scores: dict[str, float] = {}
    if unet:
        cell, cell_gt = np.asarray(open_labels(data, "cell")), np.asarray(open_labels(gt, "cell"))
        mito, mito_gt = np.asarray(open_labels(data, "mito")), np.asarray(open_labels(gt, "mito"))
        scores = {"cell_dice": dice_score(cell_gt > 0, cell > 0),
                  "nucleus_dice": dice_score(cell_gt == 2, cell == 2),
                  "mito_dice": dice_score(mito_gt > 0, mito > 0)}
        layers = {"cell": cell[z], "mito": mito[z]}
    pairs = block_contingency(pred, truth)  # the 3-D matching, for the scores and the error panel
    m, outcomes = match_contingency(pairs), instance_outcomes(pairs)
    counts = {"matched": outcomes.matched_gt.size, "missed": outcomes.missed.size,
              "false": outcomes.false.size, "split": outcomes.split_gt.size}
    save_figure(np.asarray(img.data[z]), work / "demo.png", isg=pred[z],
                errors=outcomes.masks(truth[z], pred[z]), error_counts=counts,
                pixel_nm=float(img.voxel_size_nm[2]), title=f"sxtdask demo, slice {z}", **layers)
    png = out / "demo.png"
    con.say(f"5/5 saved {png}")
    diam = table["equivalent_diameter_nm"]
    dice = "".join(f"; {k.replace('_', ' ')} {v:.3f}" for k, v in scores.items())
    text = (
        f"\nsxtdask demo: {len(table)} ISGs found ({m.tp + m.fn} in the ground truth); "
        f"F1@IoU0.5 {m.f1:.3f} (precision {m.precision:.3f}, recall {m.recall:.3f}){dice}; "
        f"{counts['missed']} missed, {counts['false']} false, {counts['split']} split; "
        f"median ISG diameter {float(diam.median()) if len(diam) else float('nan'):.0f} nm"
    )
    note = ("\nThe bundled U-Nets were trained on sxtdask's synthetic phantoms only; for real "
            "tomograms train on your own labels (sxtdask train) or pass --model PATH."
            if unet else "")
    return {"f1": m.f1, "n": len(table), "png": str(png), **scores, "errors": counts,
            "labels": [o.name for o in segmenter.outputs], "note": note}, text
