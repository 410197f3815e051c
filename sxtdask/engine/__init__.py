"""The chunked engine: block planning and the store run's graph, cluster connection (the
per-worker model cache lives in ``sxtdask.models`` and is re-exported here).
"""

from ..models import cached_model, clear_models, load_counts
from ._cluster import ClusterConfig, connect, dashboard_moved, worker_environ
from ._jobqueue import job_bounds, jobqueue_cluster, wait_for_first_worker
from ._run import (
    WORKER_BASELINE,
    StoreRun,
    plan_grid,
    plan_memory,
    plan_store,
    segment_array,
    segment_store,
    smallest_memory_limit,
    staged_name,
    task_prefix,
    tomogram_name,
    worker_memory,
)

__all__ = [
    "WORKER_BASELINE",
    "ClusterConfig",
    "StoreRun",
    "cached_model",
    "clear_models",
    "connect",
    "job_bounds",
    "jobqueue_cluster",
    "wait_for_first_worker",
    "worker_environ",
    "dashboard_moved",
    "load_counts",
    "plan_grid",
    "plan_memory",
    "plan_store",
    "segment_array",
    "segment_store",
    "smallest_memory_limit",
    "staged_name",
    "task_prefix",
    "tomogram_name",
    "worker_memory",
]
