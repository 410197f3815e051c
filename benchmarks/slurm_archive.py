"""``sxtdask archive --cluster slurm`` against a LocalCluster with the same number of workers: wall
time of the whole command (cluster start and job queueing included), and whether the outputs are
identical.

Needs a live SLURM (``.ci/slurm-up`` starts a single-node one as root) and dask-jobqueue. The
tomograms are phantoms written by ``sxtdask synth``; the tasks are the cell U-Net and the ISG
instances (the bundled networks), so both runs do real work on their workers.

    python benchmarks/slurm_archive.py --tomograms 6 --shape 48,128,128 --workers 2
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr


def _sxtdask(*args: str) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sxtdask.cli", "-q", *args], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"sxtdask {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return time.perf_counter() - t0


def _outputs(out: Path) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    labels = {}
    for store in sorted((out / "tomograms").glob("*.ome.zarr")):
        for name in sorted(p.name for p in (store / "labels").iterdir() if p.is_dir()):
            labels[f"{store.name}/{name}"] = zarr.open_array(store / "labels" / name / "0",
                                                             mode="r")[...]
    with (out / "manifest.csv").open(newline="") as f:
        rows = [{k: v for k, v in r.items() if not k.startswith(("seconds_", "started",
                                                                  "finished"))}
                for r in csv.DictReader(f)]
    return labels, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tomograms", type=int, default=6)
    ap.add_argument("--shape", default="48,128,128")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", default="cell,isg-instances")
    args = ap.parse_args()
    if shutil.which("sbatch") is None:
        raise SystemExit("no SLURM here (run .ci/slurm-up as root first)")
    root = Path(tempfile.mkdtemp(prefix="sxtdask-slurm-bench-"))
    try:
        inp = root / "in"
        inp.mkdir()
        for i in range(args.tomograms):
            _sxtdask("synth", "--shape", args.shape, "--seed", str(100 + i), str(inp / f"t{i}.mrc"))
            shutil.move(str(inp / f"t{i}.gt.zarr"), root / f"t{i}.gt.zarr")
        config = root / "slurm.yaml"
        config.write_text("jobqueue:\n  slurm:\n    cores: 1\n    memory: 3GiB\n    queue: debug\n"
                          "    walltime: '00:30:00'\n    interface: null\n"
                          "    scheduler-options: {host: 127.0.0.1}\n")
        common = ["archive", str(inp), "--tasks", args.tasks, "--dashboard-address", ":0"]
        local = _sxtdask(*common, "--out", str(root / "local"), "--workers", str(args.workers))
        slurm = _sxtdask(*common, "--out", str(root / "slurm"), "--cluster", str(config),
                         "--jobs", str(args.workers))
        (la, lr), (sa, sr) = _outputs(root / "local"), _outputs(root / "slurm")
        same = lr == sr and la.keys() == sa.keys() and all(np.array_equal(la[k], sa[k])
                                                           for k in la)
        print(f"{args.tomograms} tomograms of {args.shape}, tasks {args.tasks}, "
              f"{args.workers} workers × 1 thread")
        print(f"LocalCluster: {local:.1f} s ({local / args.tomograms:.2f} s/tomogram)")
        print(f"SLURM jobs:   {slurm:.1f} s ({slurm / args.tomograms:.2f} s/tomogram), "
              f"{slurm / local:.2f}× the local wall time; outputs identical: {same}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
