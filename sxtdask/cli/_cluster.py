"""The Dask cluster of a command: its configuration from the ``workers`` options, the client with
its dashboard line, the performance report, and the dashboard's names for the work.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sxtdask._fs import atomic_file, check_new_path

from ._console import Console

__all__ = ["check_memory", "cluster_config", "open_cluster", "span_name"]

#: A measuring task (stats, evaluate) holds its input blocks and about twice as much again in
#: temporaries (masks, per-label sums and index arrays): three copies of its blocks.
_MEASURE_COPIES = 3


def cluster_config(args: argparse.Namespace) -> Any:
    """The ``ClusterConfig`` of the ``workers`` options (:func:`._options.cluster_options`)."""
    from sxtdask.engine import ClusterConfig

    return ClusterConfig(
        scheduler=args.scheduler, workers=args.workers, threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit, dashboard_address=args.dashboard_address,
        tls_ca_file=getattr(args, "tls_ca_file", None), tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None), cluster=getattr(args, "cluster", None),
        jobs=getattr(args, "jobs", None), min_jobs=getattr(args, "min_jobs", None),
        max_jobs=getattr(args, "max_jobs", None),
    )


def check_memory(args: argparse.Namespace, block_bytes: int, what: str) -> None:
    """Refuse a ``--memory-limit`` in which a measuring task on blocks of ``block_bytes`` (its
    input blocks together) cannot run beside a worker's own memory, before any cluster starts
    (such a worker would be paused for good: the run would hang).
    """
    cluster_config(args).refuse_small_memory(_MEASURE_COPIES * block_bytes, what)


def block_bytes(*arrays: Any) -> int:
    """Bytes of one chunk of each of ``arrays`` (Dask arrays), together."""
    total = 0
    for a in arrays:
        size = 1
        for n in a.chunksize:
            size *= int(n)
        total += size * a.dtype.itemsize
    return total


@contextmanager
def open_cluster(args: argparse.Namespace, con: Console, config: Any = None) -> Iterator[Any]:
    """The run's Dask client (``config``, default from the cluster options): its dashboard link is
    said first (and, in one line on stderr, that the port asked for was taken), and the work
    inside is recorded into ``--performance-report`` when given.
    """
    from sxtdask.engine import connect, dashboard_moved, wait_for_first_worker

    report = getattr(args, "performance_report", None)
    if report is not None:
        # a clear error before any cluster starts; an existing file only with --overwrite
        check_new_path(report, getattr(args, "overwrite", False), folder=False,
                       what="--performance-report")
    config = config if config is not None else cluster_config(args)
    with connect(config) as client:
        moved = None if config.scheduler else dashboard_moved(config.dashboard_address,
                                                              client.dashboard_link)
        if moved:
            con.note(f"dashboard port {moved[0]} is taken; using {moved[1]}")
        con.say(f"dashboard: {client.dashboard_link}", dashboard=client.dashboard_link)
        if config.batch:
            con.note(f"workers: {_jobs_text(config)} on {config.batch}, cancelled when the run "
                     "ends; waiting for the first to start")
            wait_for_first_worker(client)
        with _performance_report(report):
            yield client


def _jobs_text(config: Any) -> str:
    from sxtdask.engine import job_bounds

    if config.jobs is not None:
        return f"{config.jobs} batch job(s)"
    low, high = job_bounds(None, config.min_jobs, config.max_jobs)
    return f"{low} to {high} batch jobs, scaled to the work"


@contextmanager
def _performance_report(path: Path | None) -> Iterator[None]:
    """distributed's performance report of the work inside (needs a current client), written under a
    temporary name and renamed to ``path`` only when the work succeeded.
    """
    if path is None:
        yield
        return
    from distributed import performance_report

    with atomic_file(path) as tmp, performance_report(filename=str(tmp)):
        yield


def span_name(stage: str, data: Path) -> str:
    """``"segment cell.zarr"``: the dashboard's name for one command's work on one store."""
    return f"{stage} {data.resolve().name or data}"
