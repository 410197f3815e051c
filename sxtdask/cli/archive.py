"""``sxtdask archive INPUT_DIR --out OUTPUT_DIR --tasks ...``: segment every tomogram of a folder.

Draws an archive-level bar (tomograms finished) with one bar per stage under it (tomograms through
each stage, segmentation chunks), says one line per finished tomogram, and exits with status 1
when any tomogram failed (after writing everything else).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from sxtdask.errors import ConfigError

from ._cluster import cluster_config, open_cluster
from ._console import Console
from ._options import (
    _positive,
    add_task_option,
    cluster_options,
    model_options,
    output_options,
)
from ._segmenters import make_segmenter

NAME = "archive"
EXAMPLES = """\
examples:
  # every tomogram under tomograms/, ISG instances with the classical method:
  sxtdask archive tomograms --out archive --task isg-instances --method classical
  # cell and ISG instances with the bundled U-Nets; ground truth folders skipped:
  sxtdask archive tomograms --out archive --tasks cell,isg-instances --exclude '*.gt.zarr'
"""

_STAGE_LABELS = {
    "checksum": "checksums", "convert": "conversions", "statistics": "statistics",
    "segment": "segmentations", "chunks": "segmentation chunks", "pyramids": "label pyramids",
    "measure": "measurements",
}


def add_parser(sub: Any) -> None:
    """Add the ``archive`` sub-command to ``sub`` (argparse sub-parsers)."""
    head = argparse.ArgumentParser(add_help=False)
    head.add_argument("input_dir", type=Path, metavar="INPUT_DIR",
                      help="folder searched (recursively) for tomograms")
    head.add_argument("--out", required=True, type=Path, metavar="OUTPUT_DIR",
                      help="archive folder (created; reruns reuse it)")
    add_task_option(head, "what to segment in every tomogram; several, comma-separated, share "
                          "one read of each chunk")
    tail = argparse.ArgumentParser(add_help=False)
    tail.add_argument("--in-flight", type=_positive, default=None, metavar="N",
                      help="tomograms processed at once (default: the workers' threads, at least "
                           "2)")
    tail.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                      help="skip inputs whose relative path or name matches (repeatable), e.g. "
                           "'*.gt.zarr'")
    models = model_options()  # --chunks: the archive's copies of the images are new images
    sub.add_parser(
        NAME, help="convert, segment and measure every tomogram under a folder (resumable)",
        description="Find tomograms (MRC/REC, AmiraMesh, TIFF, NumPy, OME-Zarr) under INPUT_DIR, "
                    "write one OME-Zarr with labels per tomogram under OUTPUT_DIR/tomograms/, a "
                    "manifest (manifest.csv/.json) and a summary (summary.csv/.parquet/.png). "
                    "Rerunning skips finished tomograms and resumes interrupted ones.",
        parents=[head, models, tail, cluster_options(), output_options()])


class _Bars:
    """Feeds the console's bars from the archive's progress snapshots."""

    def __init__(self, con: Console, stack: ExitStack, total: int) -> None:
        self.con, self.stack, self.total = con, stack, total
        self.archive = stack.enter_context(con.steps("tomograms", total))
        self.stages: dict[str, Callable[[int, int], None]] = {}

    def _update(self, stage: str, done: int, total: int) -> None:
        """A stage's bar, opened when the first tomogram enters the stage (closed at the end)."""
        if stage not in self.stages:
            self.stages[stage] = self.stack.enter_context(self.con.steps(_STAGE_LABELS[stage], total))
        self.stages[stage](done, total)

    def __call__(self, snap: Any) -> None:
        self.archive(snap.finished, self.total)
        for stage, (done, started) in snap.stages.items():
            if started:
                self._update(stage, done, started)
        done, planned = snap.chunks
        if planned:
            self._update("chunks", done, planned)


def _say_row(con: Console, row: dict[str, Any], instances: frozenset[str] = frozenset()) -> None:
    """One line for a finished tomogram; only the ``instances`` outputs are counted as such (a
    semantic mask's count is not a number of objects).
    """
    status = row["status"]
    if status == "ignored":
        con.say(f"{row['input']}: ignored: {row['note']}", input=row["input"], status=status)
        return
    if status == "failed":
        con.say(f"{row['input']}: failed at {row['stage']}: {row['error']}",
                input=row["input"], status=status)
        return
    counts = ", ".join(f"{k}: {int(v):,} instances"
                       for k, v in (row.get("instance_counts") or {}).items() if k in instances)
    took = row.get("seconds_total")
    detail = "unchanged" if status == "skipped" else f"{took:.1f} s" if took is not None else ""
    scale = ("; voxel size assumed (1 nm: the file has none), so its µm³ figures are not physical"
             if row.get("voxel_size_assumed") else "")
    con.say(f"{row['input']}: {status} → {row['output']}{f' ({counts})' if counts else ''}"
            f"{f', {detail}' if detail else ''}{scale}", input=row["input"], status=status)


def run(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """Plan and run the archive of ``args.input_dir`` into ``args.out`` on a Dask cluster."""
    from sxtdask._fs import write_lock
    from sxtdask.archive import plan_archive, run_archive

    t0 = time.perf_counter()
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size ({args.batch_size}) must be at least 1")
    segmenter = make_segmenter(args)
    instances = frozenset(o.name for o in segmenter.outputs if o.kind.value == "instances")
    plan = plan_archive(args.input_dir, args.out, exclude=args.exclude)  # errors before any cluster
    ignored = f" ({len(plan.ignored)} Zarr folder(s) ignored)" if plan.ignored else ""
    con.say(f"{len(plan.tomograms)} tomogram(s) under {args.input_dir}{ignored}; archive in "
            f"{args.out}")
    config = cluster_config(args)
    config.refuse_small_memory(0, "run a task")  # blocks are sized per tomogram, once converted
    if segmenter.needs_gpu and not args.scheduler:
        config = dataclasses.replace(config, gpu=True)  # dask-cuda: one worker per GPU
    # One writer per archive folder, checked before any cluster starts.
    with write_lock(plan.out_dir, str(args.out), "sxtdask archive"), \
            open_cluster(args, con, config) as client, ExitStack() as stack:
        bars = None if con.quiet else _Bars(con, stack, len(plan.tomograms))
        result = run_archive(plan, segmenter, client, chunks=args.chunks, in_flight=args.in_flight,
                             progress=bars, on_row=lambda row: _say_row(con, row, instances))
    counts = result.counts
    failed = result.failed
    text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    con.say(f"archive {args.out}: {text}; wrote {result.manifest.name}, "
            f"{', '.join(p.name for p in result.summary)} ({time.perf_counter() - t0:.1f} s)")
    if failed:
        names = ", ".join(r["input"] for r in failed)
        print(f"sxtdask: archive: {len(failed)} of {len(plan.tomograms)} tomogram(s) failed: {names} "
              f"(errors in {result.manifest})", file=sys.stderr)
    return {
        "exit_status": 1 if failed else 0,
        "counts": counts,
        "failed": [{"input": r["input"], "stage": r["stage"], "error": r["error"]} for r in failed],
        "manifest": str(result.manifest),
        "summary": [str(p) for p in result.summary],
        "total_seconds": round(time.perf_counter() - t0, 3),
    }
