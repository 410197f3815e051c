"""Workers as batch jobs: a dask-jobqueue cluster (SLURM, PBS, SGE, LSF) that this process starts,
scales and tears down.

The jobs' settings come, in this order of precedence, from a YAML file (``--cluster
CONFIG.yaml``, dask-jobqueue's own layout: a top-level ``jobqueue:`` mapping with one system), the
user's Dask configuration (``~/.config/dask/jobqueue.yaml``, ``DASK_JOBQUEUE__SLURM__...``), and
sxtdask's defaults where both are silent:

- ``job-name`` ``sxtdask-worker``; ``cores``: the run's threads per worker; ``memory``: its
  ``--memory-limit`` when that is a size, else 4 GiB per core; one worker process per job;
- ``death-timeout`` 60 s, so that a job whose scheduler is gone (this process killed with
  SIGKILL) ends by itself instead of holding its allocation until its walltime;
- ``log-directory``: a fresh folder in the temporary directory (said at INFO), never the working
  directory, which dask-jobqueue would otherwise fill with one file per job; removed at a
  normal end, kept (and named in a warning) after an error or an interruption;
- the dashboard on ``--dashboard-address``.

Every job is cancelled when the run ends, fails or is interrupted (the cluster's close cancels
each job it submitted); a worker job that dies mid-run (``scancel``, a node failure, its
walltime) loses only its running tasks, which the scheduler gives to the other workers, and
adaptive scaling submits a replacement.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError, SxtdaskError

__all__ = ["JOB_SYSTEMS", "job_bounds", "jobqueue_cluster", "jobqueue_settings", "jobqueue_system",
           "wait_for_first_worker"]

logger = logging.getLogger(__name__)

#: ``--cluster`` names and dask-jobqueue's cluster classes.
JOB_SYSTEMS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster",
               "lsf": "LSFCluster"}

_GIB = 1 << 30
#: A job's memory per core where neither the configuration nor ``--memory-limit`` says.
DEFAULT_MEMORY_PER_CORE = 4 * _GIB
#: Seconds a job's worker waits for a scheduler that is gone before it exits.
DEFAULT_DEATH_TIMEOUT = 60
_INSTALL = "pip install 'sxtdask[cluster]' (or: pip install dask-jobqueue)"


def jobqueue_system(cluster: str) -> tuple[str, dict[str, Any]]:
    """(system, settings from the file) of a ``--cluster`` value: ``slurm`` (etc.) with no settings
    of its own, or a YAML file in dask-jobqueue's layout whose ``jobqueue:`` names one system.

    Raises
    ------
    InputError
        A file that is missing, is not YAML, or does not hold exactly one known system.
    ConfigError
        A name that is neither a system nor a file.
    """
    name = cluster.strip().lower()
    if name in JOB_SYSTEMS:
        return name, {}
    path = Path(cluster)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"--cluster {cluster!r}: say local, {', '.join(JOB_SYSTEMS)}, or a "
                          "dask-jobqueue CONFIG.yaml")
    if not path.is_file():
        raise InputError(f"{path}: no such cluster configuration")
    import yaml  # type: ignore[import-untyped]  # (no stubs installed)

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: not a YAML file ({first})") from None
    queue = data.get("jobqueue") if isinstance(data, dict) else None
    if not isinstance(queue, dict):
        raise InputError(f"{path}: expected a top-level 'jobqueue:' mapping (dask-jobqueue's "
                         "layout, as in cluster/slurm.yaml)")
    systems = [k for k in queue if str(k).lower() in JOB_SYSTEMS]
    unknown = [str(k) for k in queue if str(k).lower() not in JOB_SYSTEMS]
    if len(systems) != 1 or unknown:
        found = ", ".join(map(str, queue)) or "nothing"
        raise InputError(f"{path}: 'jobqueue:' must hold one of {', '.join(JOB_SYSTEMS)}; it "
                         f"holds {found}")
    settings = queue[systems[0]] or {}
    if not isinstance(settings, dict):
        raise InputError(f"{path}: jobqueue.{systems[0]} must be a mapping of settings")
    return str(systems[0]).lower(), settings


def _size(text: str) -> int | None:
    """Bytes of a size with a unit (``16GiB``, ``500MB``), else None (auto, a fraction, 0)."""
    from dask.utils import parse_bytes

    if not re.search(r"[a-zA-Z]", str(text)) or str(text).strip().lower() == "auto":
        return None
    try:
        return int(parse_bytes(str(text)))
    except (ValueError, TypeError):
        return None


def jobqueue_settings(system: str, own: dict[str, Any], *, threads: int, memory_limit: str,
                      dashboard_address: str) -> dict[str, Any]:
    """The keyword arguments of ``system``'s cluster class: ``own`` (from ``--cluster
    CONFIG.yaml``) over Dask's ``jobqueue.<system>`` configuration, and sxtdask's defaults where
    both are silent (see the module docstring).
    """
    import dask.config
    import dask_jobqueue  # noqa: F401 - registers dask-jobqueue's default configuration

    def key(name: str) -> str:
        return name.replace("_", "-")

    configured = {key(k): v for k, v in (dask.config.get(f"jobqueue.{system}", {}) or {}).items()}
    configured.update({key(k): v for k, v in own.items()})
    kwargs: dict[str, Any] = {k.replace("-", "_"): v for k, v in own.items()}
    cores = configured.get("cores")
    if cores is None:
        cores = kwargs["cores"] = threads
    if configured.get("memory") is None:
        size = _size(memory_limit)
        kwargs["memory"] = f"{(size or DEFAULT_MEMORY_PER_CORE * int(cores)) / _GIB:.4g}GiB"
    if configured.get("job-name") is None:
        kwargs["job_name"] = "sxtdask-worker"  # what squeue/qstat show
    if configured.get("processes") is None:
        kwargs["processes"] = 1
    if configured.get("death-timeout") is None:
        kwargs["death_timeout"] = DEFAULT_DEATH_TIMEOUT
    if configured.get("log-directory") is None:
        kwargs["log_directory"] = None  # jobqueue_cluster makes a temporary folder
    scheduler = dict(configured.get("scheduler-options") or {})
    scheduler.setdefault("dashboard_address", dashboard_address)
    kwargs["scheduler_options"] = scheduler
    return kwargs


def job_bounds(jobs: int | None, min_jobs: int | None, max_jobs: int | None) -> tuple[int, int]:
    """(fewest, most) jobs: ``jobs`` for both, else ``min_jobs`` (default 1) and ``max_jobs``
    (default 4, or ``min_jobs`` if more).

    Raises
    ------
    ConfigError
        ``jobs`` with a bound, or bounds out of order.
    """
    if jobs is not None and (min_jobs is not None or max_jobs is not None):
        raise ConfigError("--jobs is a fixed number of jobs; --min-jobs/--max-jobs scale "
                          "adaptively: give one or the other")
    if jobs is not None:
        if jobs < 0:
            raise ConfigError(f"--jobs must be at least 1 (got {jobs})")
        return jobs, jobs
    low = 1 if min_jobs is None else min_jobs
    high = max(4, low) if max_jobs is None else max_jobs
    if low < 0 or high < max(1, low):
        raise ConfigError(f"jobs: 0 <= --min-jobs <= --max-jobs and --max-jobs at least 1 (got "
                          f"min={min_jobs}, max={max_jobs})")
    return low, high


@contextmanager
def jobqueue_cluster(cluster: str, *, threads: int, memory_limit: str, dashboard_address: str,
                     jobs: int | None = None, min_jobs: int | None = None,
                     max_jobs: int | None = None) -> Iterator[Any]:
    """A dask-jobqueue cluster of ``cluster`` (a system name or a YAML file), holding ``jobs``
    jobs or scaled adaptively between ``min_jobs`` (default 1) and ``max_jobs`` (default 4);
    a job that ends early is replaced; every job is cancelled on exit, whatever the exit.

    Raises
    ------
    SxtdaskError
        dask-jobqueue is not installed, or the batch system refused the cluster (its commands
        are missing, or a setting is wrong): one line saying which.
    """
    system, own = jobqueue_system(cluster)
    try:
        import dask_jobqueue
    except ImportError:
        raise SxtdaskError(f"--cluster {system} needs dask-jobqueue: {_INSTALL}") from None
    low, high = job_bounds(jobs, min_jobs, max_jobs)
    kwargs = jobqueue_settings(system, own, threads=threads, memory_limit=memory_limit,
                               dashboard_address=dashboard_address)
    own_logs = None
    if "log_directory" in kwargs and kwargs["log_directory"] is None:
        own_logs = Path(tempfile.mkdtemp(prefix=f"sxtdask-{system}-jobs-"))
        kwargs["log_directory"] = str(own_logs)
    ok = False
    cls = getattr(dask_jobqueue, JOB_SYSTEMS[system])
    failures = SubmitFailures()
    made: Any = None
    try:
        submit = str(cls.job_cls.submit_command or "").split()
        if submit and shutil.which(submit[0]) is None:
            raise ConfigError(f"--cluster {system}: {submit[0]} not found; run sxtdask where "
                              f"{system} jobs are submitted (a login node)")
        with warnings.catch_warnings():  # a taken dashboard port: the CLI says where it went
            warnings.filterwarnings("ignore", message=r"Port \d+ is already in use",
                                    category=UserWarning)
            made = cls(**kwargs, job_cls=_recording(cls.job_cls, failures))
    except (ValueError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{system} jobs: {first} (set it in --cluster CONFIG.yaml, as in "
                          f"cluster/{system}.yaml, or in ~/.config/dask/jobqueue.yaml)") from None
    finally:
        if own_logs is not None and made is None:
            shutil.rmtree(own_logs, ignore_errors=True)
    made.submit_failures = failures
    try:
        job = made._dummy_job
        logger.info("%s jobs of %s core(s) and %s each, %d worker process(es) per job; job "
                    "logs in %s", system, job.worker_cores, kwargs.get("memory") or "the "
                    "configured memory", job.worker_processes,
                    made._job_kwargs.get("log_directory") or "the configured folder")
        # A fixed --jobs N is adaptive between N and N: a job that ends early (scancel, its
        # walltime, a node failure) is replaced, where plain scaling would leave the run
        # waiting for workers that never come.
        if high > 0:  # jobs=0: none (a caller that only wants the job script)
            made.adapt(minimum_jobs=low, maximum_jobs=high)
        yield made
        ok = True
    finally:
        _close(made, system)
        if own_logs is not None and (ok or not any(own_logs.iterdir())):
            shutil.rmtree(own_logs, ignore_errors=True)  # a normal end: not needed
        elif own_logs is not None:
            logger.warning("the %s jobs' logs are in %s", system, own_logs)


class SubmitFailures(list[str]):
    """The batch system's words for each job it refused; ``joined`` once a worker has come (a
    refusal before that stops the run in :func:`wait_for_first_worker`, one after it is
    logged as a warning).
    """

    joined = False


def _recording(job_cls: type, failures: SubmitFailures) -> type:
    """``job_cls`` whose failed submissions are appended to ``failures`` (the batch system's own
    words) instead of raising in the cluster's event loop, where they would only print a
    traceback while the run waits for workers that never come. The job then counts as
    running with no job ID: nothing to cancel, and not resubmitted in a loop.
    """
    from distributed.core import Status

    class Recording(job_cls):
        async def start(self) -> None:
            try:
                await super().start()
            except Exception as err:  # noqa: BLE001 - reported to the run
                failures.append(_submit_error(err))
                if failures.joined:
                    logger.warning("a batch job could not be submitted: %s", failures[-1])
                self.status = Status.running

    Recording.__name__ = Recording.__qualname__ = job_cls.__name__
    return Recording


def _submit_error(err: BaseException) -> str:
    """The batch system's error lines in a failed submission's exception (dask-jobqueue puts the
    command's stderr in its message), else the message's first line.
    """
    text = str(err)
    errors = [ln.strip() for ln in text.split("stderr:", 1)[-1].splitlines()
              if ln.strip()] if "stderr:" in text else []
    return "; ".join(errors[:2]) or (text.strip().splitlines() or [type(err).__name__])[0]


def _close(cluster: Any, system: str) -> None:
    """Close ``cluster``: dask-jobqueue cancels every job it still holds. Jobs it lost track of
    (a close that failed) are named in a warning.
    """
    ids = _job_ids(cluster)
    try:
        with _signals_deferred():  # a second Ctrl-C or SIGTERM must not cut the cancelling short
            cluster.close(timeout=60)
    except Exception as err:  # noqa: BLE001 - report, and say which jobs may be left
        logger.warning("closing the %s cluster failed (%s); these jobs may still be queued: %s",
                       system, err, " ".join(sorted(ids)) or "none known")


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back in this thread inside (delivered, and raised, after)."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or \
            threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _job_ids(cluster: Any) -> set[str]:
    out: set[str] = set()
    for job in list(getattr(cluster, "workers", {}).values()):
        jid = getattr(job, "job_id", None)
        if jid:
            out.add(str(jid))
    return out


def wait_for_first_worker(client: Any) -> bool:
    """Block until a worker has joined ``client``'s scheduler (a batch queue may hold the jobs
    for a while); True when it had to wait.

    Raises
    ------
    SxtdaskError
        The batch system refused every job submitted so far (its own words).
    """
    if client.scheduler_info().get("workers"):
        return False
    failures = getattr(getattr(client, "cluster", None), "submit_failures", None)
    while True:
        try:
            client.wait_for_workers(1, timeout=1.0)
            if failures is not None:
                failures.joined = True
            return True
        except TimeoutError:
            pass
        if failures:
            raise SxtdaskError(f"the batch system refused the workers' job: {failures[0]}")
