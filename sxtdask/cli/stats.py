"""``sxtdask stats DATA --labels NAME --out TABLE``: a per-instance table of a label image."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from sxtdask._fs import check_new_path
from sxtdask.errors import ConfigError

from ._cluster import block_bytes, check_memory, open_cluster, span_name
from ._console import Console
from ._options import cluster_options, output_options

NAME = "stats"
EXAMPLES = """\
examples:
  # one row per ISG: volume, centroid, bounding box, diameter, mean absorption:
  sxtdask stats cell.zarr --labels isg --out isg.csv
  # the same as Parquet, over an earlier table:
  sxtdask stats cell.zarr --labels isg --out isg.parquet --overwrite
"""

logger = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    """Add the ``stats`` sub-command to ``sub`` (argparse sub-parsers)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("data", type=Path, metavar="DATA",
                     help="OME-Zarr image with labels/ (e.g. from sxtdask segment)")
    own.add_argument("--labels", required=True, metavar="NAME",
                     help="instance label image to measure, e.g. isg")
    own.add_argument("--out", required=True, type=Path, metavar="TABLE",
                     help="table to write, one row per instance: TABLE.csv or TABLE.parquet")
    own.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    sub.add_parser(NAME, help="per-instance table (CSV or Parquet) of a label image",
                   parents=[own, cluster_options(), output_options()])


def run_stats(data: Path, labels: str, out: Path, client: Any, con: Console, *,
              overwrite: bool = False) -> Any:
    """Measure every instance of the label image ``labels`` of ``data``; write the table to
    ``out`` and return it.
    """
    from sxtdask.io import open_image, open_labels
    from sxtdask.measure import instance_table, write_table

    img = open_image(data)
    if img.voxel_size_assumed:
        logger.warning("%s: the voxel size is assumed (1 nm; the source file had none), so "
                       "volume_um3 and the nm columns are not physical; convert again with "
                       "--voxel-size Z,Y,X", data)
    lab = open_labels(data, labels)
    table = con.compute(client, instance_table(lab, img.strict(0), spacing_nm=img.voxel_size_nm),
                        f"measuring {labels}")
    write_table(table, out, overwrite=overwrite)
    return table


def run(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """Compute the per-instance table of one label image and write it (CSV or Parquet)."""
    from distributed import span

    from sxtdask.io import open_image, open_labels

    if args.out.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(f"{args.out}: the table must end in .csv or .parquet")
    check_new_path(args.out, args.overwrite, folder=False, what="--out")
    lab = open_labels(args.data, args.labels)  # a clear error before any cluster starts
    check_memory(args, block_bytes(lab, open_image(args.data).data),
                 f"measure a block of {args.labels}")
    data = args.data.absolute()  # workers open the store by path, in their own working folders
    with open_cluster(args, con) as client, span(span_name(f"stats {args.labels}", data)):
        table = run_stats(data, args.labels, args.out, client, con, overwrite=args.overwrite)
    con.say(f"wrote {args.out}: {len(table)} instances of {args.labels!r}")
    return {"rows": len(table), "output": str(args.out)}
