"""``sxtdask demo``: synth → convert → segment → stats → PNG, on a small phantom."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ._cluster import open_cluster
from ._console import Console, write_json
from ._options import _triple, cluster_options, output_options
from .segment import run_segment
from .stats import run_stats

NAME = "demo"


def add_parser(sub: Any) -> None:
    """Add the ``demo`` sub-command to ``sub`` (argparse sub-parsers)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--out", type=Path, default=Path("sxtdask-demo"),
                     help="folder (default ./sxtdask-demo)")
    own.add_argument("--shape", type=_triple, default=(128, 256, 256), metavar="Z,Y,X")
    own.add_argument("--seed", type=int, default=0)
    own.add_argument("--method", default="unet", choices=("unet", "classical"),
                     help="unet: the bundled cell, mito and ISG U-Nets (default); classical: ISGs "
                          "only")
    own.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    sub.add_parser(NAME, help="synth → convert → segment → stats → PNG, on a small phantom",
                   parents=[own, cluster_options(), output_options()])


def run(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """synth → convert → segment → stats → PNG, in ``args.out`` (its own files are replaced)."""
    import numpy as np

    from sxtdask._demo import save_figure
    from sxtdask.io import open_image, open_labels, open_volume, write_image
    from sxtdask.measure import match_instances
    from sxtdask.metrics import dice_score
    from sxtdask.phantoms import write_phantom
    from sxtdask.segmenters import make_segmenter

    t0 = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    unet = args.method == "unet"
    tasks = ("cell", "mito", "isg-instances") if unet else ("isg-instances",)
    segmenter = make_segmenter(tasks, None if unet else "classical", device=args.device,
                               batch_size=8)
    with con.busy("synthesising a phantom"):
        mrc, gt = write_phantom(out / "phantom.mrc", shape=args.shape, seed=args.seed,
                                overwrite=True)
    con.say(f"1/5 synthesised {mrc} (ground truth {gt})")
    data = out / "phantom.zarr"
    with open_volume(mrc) as vol, con.steps("converting", 1) as tick:
        write_image(vol, data, overwrite=True, progress=tick)
    con.say(f"2/5 converted to {data}")
    with open_cluster(args, con) as client:
        report = run_segment(data.absolute(), segmenter, client, con, overwrite=True)
        con.say(f"3/5 segmented {', '.join(tasks)} in {report['chunk_count']} chunks "
                f"({'bundled U-Nets' if unet else 'classical ISG method'})")
        table_path = out / "isg.csv"
        table = run_stats(data, "isg", table_path, client, con, overwrite=True)
        con.say(f"4/5 wrote the ISG table {table_path}")
    write_json(out / "run.json", report)
    truth = np.asarray(open_labels(gt, "isg"))
    pred = np.asarray(open_labels(data, "isg"))
    image = open_image(data).data
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
    png = save_figure(np.asarray(image[z]), out / "demo.png", isg=pred[z],
                      title=f"sxtdask demo, slice {z}", **layers)
    con.say(f"5/5 saved {png}")
    m = match_instances(truth, pred)
    diam = table["equivalent_diameter_nm"]
    dice = "".join(f"; {k.replace('_', ' ')} {v:.3f}" for k, v in scores.items())
    text = (
        f"\nsxtdask demo: {len(table)} ISGs found ({m.tp + m.fn} in the ground truth); "
        f"F1@IoU0.5 {m.f1:.3f} (precision {m.precision:.3f}, recall {m.recall:.3f}){dice}; "
        f"median ISG diameter "
        f"{float(diam.median()) if len(diam) else float('nan'):.0f} nm; "
        f"{time.perf_counter() - t0:.0f} s in all.\nOutputs in {out}/: phantom.mrc, "
        f"phantom.gt.zarr, phantom.zarr (labels/{', labels/'.join(s.name for s in segmenter.outputs)}), "
        f"isg.csv, run.json, demo.png"
    )
    if unet:
        text += ("\nThe bundled U-Nets were trained on sxtdask's synthetic phantoms only; for real "
                 "tomograms train on your own labels (sxtdask train) or pass --model PATH.")
    con.say(text)
    return {"f1": m.f1, "n": len(table), "png": str(png), **scores}
