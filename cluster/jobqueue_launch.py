"""Start sxtdask workers as batch jobs and keep their scheduler up for other clients: a thin example
of the code behind ``sxtdask ... --cluster`` (which needs none of this: it starts, scales and
cancels the jobs itself for one run).

Use it when several runs, or a notebook, should share one set of jobs::

    python cluster/jobqueue_launch.py cluster/slurm.yaml --jobs 4     # or: slurm, pbs, ...
    sxtdask segment /shared/cell.zarr --task cell --device cuda --scheduler ADDRESS   # 2nd shell

The scheduler lives in this process: Ctrl-C (or SIGTERM) stops it and cancels every job.
"""

from __future__ import annotations

import argparse
import time

from sxtdask.engine import jobqueue_cluster


def main() -> None:
    """Start the jobs, print the scheduler address, and wait for Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cluster", help="slurm, pbs, sge, lsf, or a dask-jobqueue CONFIG.yaml")
    parser.add_argument("--jobs", type=int, default=2, help="jobs to keep (replaced if they end)")
    parser.add_argument("--print-script", action="store_true",
                        help="print the job script that would be submitted, and exit")
    args = parser.parse_args()
    with jobqueue_cluster(args.cluster, threads=1, memory_limit="auto",
                          dashboard_address="127.0.0.1:8787",
                          jobs=0 if args.print_script else args.jobs) as cluster:
        if args.print_script:
            print(cluster.job_script())
            return
        print(f"scheduler: {cluster.scheduler_address}", flush=True)
        print(f"dashboard: {cluster.dashboard_link}", flush=True)
        print("Ctrl-C stops the scheduler and cancels the jobs.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
