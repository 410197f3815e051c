"""Where the work runs: a local cluster by default, or an existing scheduler."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from distributed import Client, LocalCluster

from ..errors import ConfigError, SxtdaskError

__all__ = ["ClusterConfig", "connect"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    """How to get workers.

    Attributes
    ----------
    scheduler : str or None
        Address of an existing scheduler (``tcp://host:8786``); None starts a ``LocalCluster``.
    workers : int or None
        Local worker processes (default: one per core, at most 4).
    threads_per_worker : int
        Threads per local worker.
    memory_limit : str
        Per local worker (Dask syntax: ``"4GiB"``, ``"auto"``).
    dashboard_address : str
        Where the local dashboard listens (localhost unless told otherwise; ``:0`` picks a port).
    gpu : bool
        Start a dask-cuda ``LocalCUDACluster`` (one worker per visible GPU, each with a ``GPU``
        resource that inference tasks require) instead of a ``LocalCluster``.
    device_memory_limit : str or float
        dask-cuda's per-GPU spill threshold (``"0.8"`` of the device by default).
    """

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    dashboard_address: str = "127.0.0.1:8787"
    gpu: bool = False
    device_memory_limit: str | float = 0.8

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers ({self.workers}) must be at least 1")
        if self.threads_per_worker < 1:
            raise ConfigError(f"threads per worker ({self.threads_per_worker}) must be at least 1")


def _local_cuda_cluster(config: ClusterConfig) -> LocalCluster:
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as err:
        raise SxtdaskError(
            "GPU workers need dask-cuda: pip install 'sxtdask[cuda]' (or run with --device cpu)"
        ) from err
    return LocalCUDACluster(
        threads_per_worker=config.threads_per_worker,
        memory_limit=config.memory_limit,
        device_memory_limit=config.device_memory_limit,
        dashboard_address=config.dashboard_address,
        resources={"GPU": 1},
        silence_logs=logging.WARNING,
    )


def _default_workers() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))


@contextmanager
def connect(config: ClusterConfig = ClusterConfig()) -> Iterator[Client]:
    """A Dask client for the run; the local cluster (if any) is closed on exit.

    The dashboard link is logged at INFO (``client.dashboard_link``).
    """
    if config.scheduler:
        try:
            client = Client(config.scheduler, timeout="10s")
        except (OSError, TimeoutError) as err:
            raise SxtdaskError(f"cannot reach the scheduler at {config.scheduler}: {err}") from err
        with client:
            logger.info("connected to %s; dashboard: %s", config.scheduler, client.dashboard_link)
            yield client
        return
    cluster = _local_cuda_cluster(config) if config.gpu else LocalCluster(
        n_workers=config.workers or _default_workers(),
        threads_per_worker=config.threads_per_worker,
        memory_limit=config.memory_limit,
        dashboard_address=config.dashboard_address,
        processes=True,
        silence_logs=logging.WARNING,
    )
    with cluster, Client(cluster) as client:
        logger.info("local cluster with %d workers; dashboard: %s",
                    len(cluster.workers), client.dashboard_link)
        yield client
