"""Peak worker memory of a classical ISG run on a volume and on one 4× larger (DESIGN invariant 4).

One worker process (1 thread) runs statistics, segmentation, relabelling and the label pyramid's
inputs; its resident memory is sampled every 10 ms from outside (psutil). The larger volume is the
same phantom 4× deeper, chunked alike, so a worker whose memory depends only on the chunk and the
halo shows a ratio near 1 (target ≤ 1.25).

    python benchmarks/memory.py                  # 96×384×384 vs 384×384×384
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from distributed import Client, LocalCluster


class PeakRSS:
    """Samples a process's resident set size in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _store(tmp: Path, name: str, depth: int, plane: int, seed: int) -> Path:
    from sxtdask.io import write_image
    from sxtdask.phantoms import make_phantom

    base = make_phantom((64, plane, plane), seed=seed).image
    reps = -(-depth // base.shape[0])
    vol = np.concatenate([base] * reps)[:depth]  # deeper, same content per chunk
    return write_image(vol, tmp / name, chunks=(32, plane, plane), voxel_size_nm=(30.0,) * 3)


def _run(client: Client, path: Path) -> tuple[int, int, int]:
    """Segment ``path``; return (baseline RSS, peak RSS, instances)."""
    from sxtdask.engine import segment_store
    from sxtdask.io import open_image
    from sxtdask.segmenters import ClassicalISG
    from sxtdask.stats import global_stats

    client.run(lambda: __import__("gc").collect())
    pid = next(iter(client.run(lambda: __import__("os").getpid()).values()))
    base = psutil.Process(pid).memory_info().rss
    with PeakRSS(pid) as rss:
        stats = client.compute(global_stats(open_image(path).data)).result()
        run = segment_store(path, ClassicalISG(), stats, overwrite=True)
        counts = client.compute(run.graph).result()
    run.finish()
    return base, rss.peak, counts["isg"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=96,
                        help="slices of the smaller volume (3 chunks: one with a halo on both sides)")
    parser.add_argument("--plane", type=int, default=384)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sxtdask-mem-"))
    try:
        small = _store(tmp, "small.zarr", args.depth, args.plane, args.seed)
        large = _store(tmp, "large.zarr", 4 * args.depth, args.plane, args.seed)
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0",
                          memory_limit="8GiB") as cluster, Client(cluster) as client:
            _run(client, small)  # warm up: imports, allocator pools
            results = {name: _run(client, p) for name, p in (("small", small), ("large", large))}
        mib = 2**20
        for name, (base, peak, n) in results.items():
            shape = (args.depth * (4 if name == "large" else 1), args.plane, args.plane)
            print(f"{name} {shape}: {n} ISGs, worker RSS peak {peak / mib:.0f} MiB "
                  f"(idle {base / mib:.0f} MiB, +{(peak - base) / mib:.0f} MiB during the run)")
        (b_s, p_s, _), (b_l, p_l, _) = results["small"], results["large"]
        print(f"peak worker memory, 4x larger volume / volume: {p_l / p_s:.2f} (target <= 1.25); "
              f"increase over idle: {(p_l - b_l) / max(p_s - b_s, 1):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
