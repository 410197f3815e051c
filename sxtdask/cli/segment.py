"""``sxtdask segment DATA --task ...``: segment an OME-Zarr image chunk by chunk into labels/<name>."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sxtdask import __version__
from sxtdask._fs import check_new_path, write_lock

if TYPE_CHECKING:
    from sxtdask.segmenters import Segmenter

from ._cluster import cluster_config, open_cluster, span_name
from ._console import Console, write_json
from ._options import add_task_option, cluster_options, model_options, output_options
from ._segmenters import make_segmenter

NAME = "segment"
EXAMPLES = """\
examples:
  # ISG instances with the classical method (no network):
  sxtdask segment cell.zarr --task isg-instances --method classical
  # cell, mitochondria and ISG instances with the bundled U-Nets, over earlier labels:
  sxtdask segment cell.zarr --task cell,mito,isg-instances --overwrite
  # a trained checkpoint, its labels beside the others, blocks of 8 full slices:
  sxtdask segment cell.zarr --task cell --model cell.pt --name cell-mine --chunks 8,64,64
  # Biomedisa's 3-D U-Net (ACSeg.h5) with its clean and fill post-processing:
  sxtdask segment cell.zarr --task cell --method unet3d --model ACSeg.h5 --clean 0.1 --fill 0.9
  # NCXT's 3-D cascade from a checkpoint of `sxtdask train --arch cascade`:
  sxtdask segment cell.zarr --task cell --method cascade --model cascade.pt --name cell-cascade
"""


def add_parser(sub: Any) -> None:
    """Add the ``segment`` sub-command to ``sub`` (argparse sub-parsers)."""
    head = argparse.ArgumentParser(add_help=False)
    head.add_argument("data", type=Path, metavar="DATA",
                      help="OME-Zarr image (from sxtdask convert); the labels go into its labels/")
    add_task_option(head, "what to segment; several, comma-separated, share one read of each "
                          "chunk")
    tail = argparse.ArgumentParser(add_help=False)
    tail.add_argument("--report", type=Path, default=None, metavar="FILE.json",
                      help="write the run's report here (timings, counts, chunks, workers)")
    tail.add_argument("--overwrite", action="store_true", help="replace existing labels")
    sub.add_parser(NAME, help="segment an OME-Zarr image chunk by chunk; writes labels/<name>",
                   parents=[head, model_options(),
                            tail, cluster_options(), output_options()])


def run_segment(
    data: Path, segmenter: Segmenter, client: Any, con: Console, *, chunks: Any = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The pipeline's one graph on ``client`` (statistics → segment and relabel → pyramids), with
    a bar per stage fed by the graph's own futures; returns the run report.
    """
    from distributed import as_completed, wait

    from sxtdask.engine import worker_memory
    from sxtdask.models import load_counts
    from sxtdask.pipeline import segment_tomogram
    from sxtdask.stats import check_stats

    limit, threads = worker_memory(client)  # batches sized to fit; a block that cannot is refused
    run = segment_tomogram(data, segmenter, chunks=chunks, overwrite=overwrite,
                           memory_limit=limit, threads=threads)
    t0 = time.time()
    futures = client.compute([run.result, run.stats, *run.blocks])
    result, stats_future, blocks = futures[0], futures[1], futures[2:]
    # On an error or Ctrl-C the futures go with the client (cancelling them here only adds
    # distributed's own tracebacks to the one line the user should see).
    with con.busy("global statistics"):
        wait(stats_future)
    if stats_future.status == "finished":
        check_stats(stats_future.result(), str(data))  # warns here for a constant volume
    with con.steps(f"segmenting {run.n_chunks} chunks + relabel", run.n_chunks) as tick:
        for k, _ in enumerate(as_completed(blocks), 1):
            tick(k, run.n_chunks)
    with con.busy("writing label pyramids"):
        report = result.result()
    ended, start, stages = report["stage_ended"], t0, {}
    for stage, end in ended.items():
        stages[stage], start = max(0.0, end - start), end
    info = segmenter.describe()
    parts = [p.describe() for p in segmenter.parts]
    stats = report["intensity_stats"]
    loads = client.run(load_counts)
    return {
        "sxtdask_version": __version__,
        "input": str(data),
        "tasks": [p.task.value for p in parts],
        "methods": [p.name for p in parts],
        "method_names": [None if p.method is None else p.method.value for p in parts],
        "models": [p.model_files[0] if p.model_files else None for p in parts],
        "chunk_count": run.n_chunks,
        "chunks_total": report["chunks_total"],
        "chunks_recomputed": report["chunks_computed"],  # an interrupted run's complete blocks are
        "chunks_skipped": report["chunks_reused"],  # skipped (their saved results are loaded)
        "chunk_shape": [c[0] for c in run.store.grid.chunks],
        "halo": list(run.store.grid.halo),
        "device": info.device,
        "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
        "instance_count": {k: int(v) for k, v in report["instance_count"].items()},
        "voxel_count": {k: int(v) for k, v in report.get("voxel_count", {}).items()},
        "voxel_size_nm": list(run.voxel_size_nm),
        "outputs": report["outputs"],
        "workers": len(loads),
        "model_loads_per_worker": loads,
        "dashboard": client.dashboard_link,
        "intensity_stats": {k: getattr(stats, k) for k in ("min", "max", "mean", "std", "p_low", "p_high")},
    }


def run(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """Segment the OME-Zarr image ``args.data`` chunk by chunk on a Dask cluster."""
    from distributed import span

    from sxtdask.engine import plan_store
    from sxtdask.io import open_image

    img = open_image(args.data)  # clear errors before any cluster starts or any statistics run
    if args.report is not None:
        check_new_path(args.report, args.overwrite, folder=False, what="--report")
    segmenter = make_segmenter(args)
    config = cluster_config(args)
    # Existing labels, bad chunks or halos, a worker memory limit too small for a block:
    # refused before any cluster starts (reads only).
    plan_store(args.data, segmenter, chunks=args.chunks, overwrite=args.overwrite,
               memory_limit=config.worker_memory_limit(), threads=config.threads_per_worker)
    t0 = time.perf_counter()
    if segmenter.needs_gpu and not args.scheduler:
        config = dataclasses.replace(config, gpu=True)  # dask-cuda: one worker per GPU
    # Workers open the store by path, in their own working folders (remote ones too).
    data = args.data.absolute()
    # One writer per store, checked before any cluster starts.
    with write_lock(data, str(args.data)), open_cluster(args, con, config) as client, \
            span(span_name("segment", data)):
        report = run_segment(data, segmenter, client, con, chunks=args.chunks,
                             overwrite=args.overwrite)
    report["total_seconds"] = round(time.perf_counter() - t0, 3)
    if args.performance_report is not None:
        report["performance_report"] = str(args.performance_report)
    if args.report is not None:
        write_json(args.report, report)
    found = "; ".join(found_text(segmenter.outputs, report))
    report["voxel_size_assumed"] = img.voxel_size_assumed
    semantic = any(o.kind.value != "instances" for o in segmenter.outputs)
    scale = (" (µm³ from an assumed 1 nm voxel: the image has no voxel size; convert with "
             "--voxel-size Z,Y,X)" if img.voxel_size_assumed and semantic else "")
    con.say(f"{args.data}: {report['chunk_count']} chunks; {found}{scale}; "
            f"wrote {', '.join(report['outputs'])} ({report['total_seconds']:.1f} s)")
    return report


def found_text(outputs: Any, report: dict[str, Any]) -> list[str]:
    """What each label image holds: ``isg: 42 instances`` for instances, ``cell: 123,456 voxels
    (3.33 µm³)`` for a semantic mask (its voxels that are not background).
    """
    um3 = 1.0
    for nm in report.get("voxel_size_nm") or (1000.0, 1000.0, 1000.0):
        um3 *= float(nm) / 1000.0
    out = []
    for spec in outputs:
        if spec.kind.value == "instances":
            out.append(f"{spec.name}: {int(report['instance_count'].get(spec.name, 0)):,} instances")
        else:
            n = int(report.get("voxel_count", {}).get(spec.name, 0))
            volume = n * um3
            out.append(f"{spec.name}: {n:,} voxels "
                       f"({f'{volume:,.1f}' if volume >= 10 else f'{volume:.3g}'} µm³)")
    return out
