"""``sxtdask evaluate PRED.zarr GT.zarr``: compare predicted label images with ground truth."""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import Any

from sxtdask._fs import check_new_path

from ._cluster import check_memory, open_cluster
from ._console import Console, write_json
from ._options import cluster_options, output_options

NAME = "evaluate"
EXAMPLES = """\
examples:
  # ISG instances segmented by sxtdask segment against synth's ground truth:
  sxtdask evaluate cell.zarr cell.gt.zarr --labels isg
  # every label image in both, all figures to a JSON file:
  sxtdask evaluate cell.zarr cell.gt.zarr --out scores.json
"""


def add_parser(sub: Any) -> None:
    """Add the ``evaluate`` sub-command to ``sub`` (argparse sub-parsers)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("pred", type=Path, metavar="PRED.zarr",
                     help="OME-Zarr image with predicted labels/")
    own.add_argument("gt", type=Path, metavar="GT",
                     help="the truth: an OME-Zarr image with labels/ (e.g. synth's *.gt.zarr), or "
                          "one label file of the same shape (AmiraMesh .labels with its Materials, "
                          "TIFF, MRC, npy)")
    own.add_argument("--labels", nargs="+", action="extend", default=None, metavar="NAME|PRED=GT",
                     help="label images to compare (default: the names present in both), e.g. "
                          "cell mito isg-mask=isg")
    own.add_argument("--ignore-label", type=int, default=None, metavar="N",
                     help="true value of unannotated voxels, left out of every figure (e.g. 2 in "
                          "NCXT's sparse labels; default: none, or the material called 'ignore' "
                          "in an AmiraMesh label file)")
    own.add_argument("--instances", action="append", default=[], metavar="NAME",
                     help="evaluate this label image as instances whatever its dtype (repeatable)")
    own.add_argument("--no-coco", action="store_true", help="skip the 2-D slice-wise COCO metrics")
    own.add_argument("--out", type=Path, default=None, help="write all metrics to this JSON file")
    own.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    sub.add_parser(NAME, help="score predicted label images against ground truth (Dice/IoU, "
                              "instance F1 and AP, 2-D COCO, morphometrics)",
                   parents=[own, cluster_options(), output_options()])


def _f(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.1f} %" if percent else f"{value:.3f}"


def _rows(name: str, res: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Headline (label, metric, value) rows of one label image's result."""
    ignored = ([(name, "unannotated truth value (left out)", str(res["ignored_label"]))]
               if res.get("ignored_label") is not None else [])
    return ignored + _figures(name, res)


def _figures(name: str, res: dict[str, Any]) -> list[tuple[str, str, str]]:
    if res["kind"] == "instances":
        m, coco = res["match_50"], res["coco_2d"]
        rows = [(name, "instances true / predicted", f"{res['gt_instances']} / {res['pred_instances']}"),
                (name, "precision / recall / F1 @ IoU 0.5",
                 " / ".join(_f(m[k]) for k in ("precision", "recall", "f1"))),
                (name, "3-D AP @ IoU 0.5:0.95", _f(res["ap_3d"]["ap"]))]
        if coco is not None:
            rows.append((name, "2-D COCO mAP / mAP@.50 / AR@100",
                         " / ".join(_f(coco[k]) for k in ("map", "map_50", "ar_100"))))
        return rows
    classes = res["classes"]
    prefix = "class " if res["kind"] == "semantic" else ""
    rows = [(name, f"{prefix}{c}: Dice / IoU", f"{_f(s['dice'])} / {_f(s['iou'])}")
            for c, s in classes.items()]
    for part, m in res.get("morphometrics", {}).items():
        errors = (_f(m["volume_um3_rel_error"], True), _f(m["surface_to_volume_per_um_rel_error"], True))
        rows.append((name, f"{part}: volume / S/V error", " / ".join(errors)))
    return rows


def render_table(result: dict[str, Any]) -> str:
    """The headline figures of an evaluation as a rich table (plain text)."""
    from rich.console import Console as RichConsole
    from rich.table import Table

    table = Table(title=f"{result['prediction']} vs {result['ground_truth']}", title_justify="left")
    for column in ("labels", "metric", "value"):
        table.add_column(column)
    for name, res in result["labels"].items():
        for row in _rows(name, res):
            table.add_row(*row)
    out = io.StringIO()
    RichConsole(file=out, width=100, color_system=None).print(table)
    return out.getvalue().rstrip("\n")


def _check_memory(args: argparse.Namespace) -> None:
    """A ``--memory-limit`` too small to compare one block of predicted and true labels (on the
    predicted image's chunks, at most 4 bytes a voxel each) is refused before a cluster starts.
    """
    from sxtdask.io import open_image

    chunk = open_image(args.pred).data
    voxels = 1
    for n in chunk.chunksize:
        voxels *= int(n)
    check_memory(args, 2 * 4 * voxels, "compare a block of labels")


def run(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """Evaluate ``args.pred`` against ``args.gt`` on a Dask cluster; print the headline table."""
    from distributed import span

    from sxtdask.metrics import evaluate_stores

    if args.out is not None:
        check_new_path(args.out, args.overwrite, folder=False, what="--out")
    t0 = time.perf_counter()
    # workers open the stores by path, in their own working folders; errors come before a cluster
    graph = evaluate_stores(args.pred.absolute(), args.gt.absolute(), args.labels,
                            instances=args.instances, coco=not args.no_coco, compute=False,
                            ignore_label=args.ignore_label)
    _check_memory(args)
    with open_cluster(args, con) as client, span(f"evaluate {args.pred.absolute().name}"):
        result = con.compute(client, graph, "evaluating")
    result["seconds"] = round(time.perf_counter() - t0, 3)
    if args.out is not None:
        write_json(args.out, result)
    if not con.json_log:  # JSON lines get the whole result as the summary event
        con.say(render_table(result))
    if args.out is not None:
        con.say(f"wrote {args.out} ({result['seconds']:.1f} s)")
    return result
