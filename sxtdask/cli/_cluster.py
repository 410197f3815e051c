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

__all__ = ["cluster_config", "open_cluster", "span_name"]


def cluster_config(args: argparse.Namespace) -> Any:
    """The ``ClusterConfig`` of the ``workers`` options (:func:`._options.cluster_options`)."""
    from sxtdask.engine import ClusterConfig

    return ClusterConfig(
        scheduler=args.scheduler, workers=args.workers, threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit, dashboard_address=args.dashboard_address,
        tls_ca_file=getattr(args, "tls_ca_file", None), tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
    )


@contextmanager
def open_cluster(args: argparse.Namespace, con: Console, config: Any = None) -> Iterator[Any]:
    """The run's Dask client (``config``, default from the cluster options): its dashboard link is
    said first, and the work inside is recorded into ``--performance-report`` when given.
    """
    from sxtdask.engine import connect

    report = getattr(args, "performance_report", None)
    if report is not None:
        # a clear error before any cluster starts; an existing file only with --overwrite
        check_new_path(report, getattr(args, "overwrite", False), folder=False,
                       what="--performance-report")
    with connect(config if config is not None else cluster_config(args)) as client:
        con.say(f"dashboard: {client.dashboard_link}", dashboard=client.dashboard_link)
        with _performance_report(report):
            yield client


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
