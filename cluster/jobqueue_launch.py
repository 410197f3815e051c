"""Start sxtdask workers as SLURM or PBS jobs (dask-jobqueue) and print the scheduler address.

A recipe, not part of the package. Install dask-jobqueue first (``pip install "sxtdask[cluster]"``),
edit ``cluster/slurm.yaml`` or ``cluster/pbs.yaml``, then on the login node::

    python cluster/jobqueue_launch.py slurm --jobs 4            # or: pbs
    python cluster/jobqueue_launch.py slurm --print-script      # the job script only, no jobs

It prints the scheduler address; in a second shell on the same node run, for example::

    sxtdask segment /shared/cell.zarr --task cell,isg-instances --device cuda --scheduler ADDRESS

The scheduler lives in this process: keep it running until sxtdask has finished, then press
Ctrl-C (the jobs are cancelled). The OME-Zarr stores must be on a file system that the login node
and every compute node see at the same path.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import dask.config
import yaml

HERE = Path(__file__).resolve().parent


def load_config(path: Path) -> dict:
    """The YAML file's ``jobqueue`` settings, merged over dask-jobqueue's defaults."""
    import dask_jobqueue  # noqa: F401 - registers dask-jobqueue's default configuration

    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict) or "jobqueue" not in config:
        raise SystemExit(f"{path}: expected a top-level 'jobqueue:' mapping")
    dask.config.update(dask.config.config, config, priority="new")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("system", choices=("slurm", "pbs"))
    parser.add_argument("--config", type=Path, default=None,
                        help="dask-jobqueue YAML (default: cluster/<system>.yaml beside this script)")
    parser.add_argument("--jobs", type=int, default=2, help="jobs (= GPU workers) to start")
    parser.add_argument("--print-script", action="store_true",
                        help="print the job script that would be submitted, and exit")
    args = parser.parse_args()

    from dask_jobqueue import PBSCluster, SLURMCluster

    load_config(args.config or HERE / f"{args.system}.yaml")
    cls = SLURMCluster if args.system == "slurm" else PBSCluster
    with cls() as cluster:
        if args.print_script:
            print(cluster.job_script())
            return
        cluster.scale(jobs=args.jobs)
        print(f"scheduler: {cluster.scheduler_address}", flush=True)
        print(f"dashboard: {cluster.dashboard_link}", flush=True)
        print(f"run: sxtdask segment DATA.zarr --task ... --device cuda "
              f"--scheduler {cluster.scheduler_address}", flush=True)
        print("Ctrl-C stops the scheduler and cancels the jobs.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
