"""Per-tomogram overhead of ``sxtdask archive`` as the archive grows: a simulated archive of n tiny
tomograms (NumPy files of 8×16×16 voxels, so that segmentation costs next to nothing) on a local
cluster, at n = 100, 1,000 and 10,000.

What it prints, per n, from one run each:

- seconds per tomogram: discovery (``plan_archive``), the run (checksum, conversion, statistics,
  segmentation, pyramids, measurement, manifest), the summary, and all of it;
- scheduler tasks per tomogram (counted by a scheduler plugin);
- the ratio of the largest n's seconds per tomogram to the smallest's (target: within 2×, i.e.
  flat: no cost that grows with the archive).

The peer is sxtdask itself at the smallest n: a cost per tomogram that grows with n shows as a
ratio above 1.

    python benchmarks/archive_scale.py                      # 100, 1000, 10000
    python benchmarks/archive_scale.py --sizes 100,1000 --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


class _TaskCounter:
    """A scheduler plugin: how many tasks the scheduler has been given (new keys)."""

    name = "sxtdask-bench-task-counter"

    def __init__(self) -> None:
        self.count = 0

    def update_graph(self, scheduler: Any, *, keys: Any = None, tasks: Any = None,
                     **kwargs: Any) -> None:
        self.count += len(tasks) if tasks is not None else 0


def _make_inputs(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    base = rng.normal(0.3, 0.05, (8, 16, 16)).astype(np.float32)
    for i in range(n):
        vol = base.copy()
        vol[3:5, 6:9, 6:9] += 0.5 + 0.01 * (i % 7)  # a granule-like blob, a little different
        np.save(folder / f"t{i:05d}.npy", vol)


def run_one(root: Path, n: int, workers: int) -> dict[str, float]:
    from distributed.diagnostics.plugin import SchedulerPlugin

    from sxtdask import connect
    from sxtdask.archive import plan_archive, run_archive
    from sxtdask.engine import ClusterConfig
    from sxtdask.segmenters import create_segmenter

    class Counter(_TaskCounter, SchedulerPlugin):
        pass

    inp, out = root / f"in-{n}", root / f"out-{n}"
    _make_inputs(inp, n)
    seg = create_segmenter("sxt", task="isg-instances", method="classical")
    with connect(ClusterConfig(workers=workers, threads_per_worker=1,
                               dashboard_address=":0")) as client:
        counter = Counter()
        client.register_plugin(counter)
        t0 = time.perf_counter()
        plan = plan_archive(inp, out)
        t1 = time.perf_counter()
        result = run_archive(plan, seg, client, chunks=(8, 16, 16))
        t2 = time.perf_counter()
        tasks = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins[Counter.name].count)
    done = result.counts.get("done", 0)
    if done != n:
        failed = [f"{r['input']} at {r.get('stage')}: {r.get('error')}" for r in result.rows
                  if r.get("status") == "failed"]
        print(f"n={n}: {done} done, {result.counts}; " + "; ".join(failed[:5]), flush=True)
    return {"n": n, "discover": (t1 - t0) / n, "run": (t2 - t1) / n, "total": (t2 - t0) / n,
            "tasks": tasks / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    import logging
    import warnings

    logging.getLogger("sxtdask").setLevel(logging.ERROR)  # .npy files: the assumed voxel size
    warnings.filterwarnings("ignore", message=r".*no voxel size")
    root = Path(tempfile.mkdtemp(prefix="sxtdask-archive-scale-", dir=args.work))
    print(f"simulated archives of 8×16×16 tomograms, classical ISG instances, "
          f"{args.workers} local workers × 1 thread")
    rows = []
    try:
        for n in sizes:
            r = run_one(root, n, args.workers)
            rows.append(r)
            print(f"n={n:>6}: {r['total'] * 1e3:7.1f} ms/tomogram (discovery "
                  f"{r['discover'] * 1e3:.2f}, run {r['run'] * 1e3:.1f}); "
                  f"{r['tasks']:.1f} scheduler tasks/tomogram", flush=True)
            shutil.rmtree(root / f"in-{n}", ignore_errors=True)
            shutil.rmtree(root / f"out-{n}", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if len(rows) > 1:
        ratio = rows[-1]["total"] / rows[0]["total"]
        print(f"overhead per tomogram at n={rows[-1]['n']} vs n={rows[0]['n']}: {ratio:.2f}× "
              f"(target ≤ 2×: {'met' if ratio <= 2 else 'MISSED'})")


if __name__ == "__main__":
    main()
