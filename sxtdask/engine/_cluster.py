"""Where the work runs: a local cluster by default, or an existing scheduler (TCP or TLS)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.security import Security

from ..errors import ConfigError, InputError, SxtdaskError
from ..models import register_model_cache
from ._run import WORKER_BASELINE, limit_option, memory_text, smallest_memory_limit
from ._shutdown import QuietShutdown, close_local_cluster, sigint_deferred

__all__ = ["ClusterConfig", "connect", "dashboard_moved", "is_local_host", "warn_if_plain_tcp"]

logger = logging.getLogger(__name__)

#: Schemes whose traffic is neither encrypted nor authenticated.
_PLAIN_SCHEMES = ("tcp", "ws")
_TLS_DOCS = "https://distributed.dask.org/en/stable/tls.html"


@dataclass(frozen=True)
class ClusterConfig:
    """How to get workers.

    Attributes
    ----------
    scheduler : str or None
        Address of an existing scheduler (``tcp://host:8786`` or ``tls://host:8786``); None starts
        a ``LocalCluster``.
    workers : int or None
        Local worker processes (default: one per core, at most 4).
    threads_per_worker : int
        Threads per local worker.
    memory_limit : str
        Per local worker (Dask syntax: ``"4GiB"``, ``"500MB"``, ``"auto"``, a fraction of this
        machine's memory such as ``"0.5"``, or ``"0"`` for no limit).
    dashboard_address : str
        Where the local dashboard listens (localhost unless told otherwise; ``:0`` picks a port).
    gpu : bool
        Start a dask-cuda ``LocalCUDACluster`` (one worker per visible GPU, each with a ``GPU``
        resource that inference tasks require) instead of a ``LocalCluster``.
    device_memory_limit : str or float
        dask-cuda's per-GPU spill threshold (``"0.8"`` of the device by default).
    tls_ca_file, tls_cert, tls_key : str or None
        PEM files for a ``tls://`` scheduler: the CA that signed the cluster's certificates, and
        this client's certificate and key (the key may sit in the certificate file). Without
        them a ``tls://`` scheduler uses Dask's configuration
        (``distributed.comm.tls.ca-file``, ``distributed.comm.tls.client.cert``/``key``, e.g. from
        ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``).
    cluster : str or None
        ``local`` (or None): a ``LocalCluster`` (``LocalCUDACluster`` with ``gpu``); ``slurm``,
        ``pbs``, ``sge``, ``lsf`` or a dask-jobqueue YAML file: workers as batch jobs that this
        process submits and cancels (:mod:`._jobqueue`).
    jobs : int or None
        A fixed number of batch jobs; None scales adaptively between ``min_jobs`` (default 1)
        and ``max_jobs`` (default 4).
    min_jobs, max_jobs : int or None
        Bounds of adaptive scaling.
    """

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    dashboard_address: str = "127.0.0.1:8787"
    gpu: bool = False
    device_memory_limit: str | float = 0.8
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    cluster: str | None = None
    jobs: int | None = None
    min_jobs: int | None = None
    max_jobs: int | None = None

    @property
    def batch(self) -> str | None:
        """The ``--cluster`` value when workers are batch jobs, else None (a local cluster or
        an existing scheduler).
        """
        name = (self.cluster or "local").strip()
        return None if name.lower() == "local" else name

    def __post_init__(self) -> None:
        if self.batch and self.scheduler:
            raise ConfigError("--cluster starts its own scheduler: leave out --scheduler")
        if self.batch and self.workers is not None:
            raise ConfigError(f"--workers sizes a local cluster; with --cluster {self.batch} "
                              "say --jobs N (or --min-jobs/--max-jobs)")
        if not self.batch and any(v is not None for v in (self.jobs, self.min_jobs,
                                                          self.max_jobs)):
            raise ConfigError("--jobs, --min-jobs and --max-jobs are for batch jobs: add "
                              "--cluster slurm|pbs|sge|lsf|CONFIG.yaml")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers ({self.workers}) must be at least 1")
        if self.threads_per_worker < 1:
            raise ConfigError(f"threads per worker ({self.threads_per_worker}) must be at least 1")
        self.worker_memory_limit()  # a memory limit Dask cannot read: an error now, not later
        files = {"CA file": self.tls_ca_file, "certificate": self.tls_cert, "key": self.tls_key}
        if not any(files.values()):
            return
        if not (self.scheduler or "").startswith("tls://"):
            raise ConfigError(f"TLS certificates are for a tls:// scheduler address, not "
                              f"{self.scheduler or 'a local cluster'}")
        if not (self.tls_ca_file and self.tls_cert):
            raise ConfigError("TLS needs both a CA file and a client certificate "
                              "(--tls-ca-file and --tls-cert)")
        for what, path in files.items():
            if path is not None and not Path(path).is_file():
                raise InputError(f"{path}: TLS {what} not found")

    def worker_memory_limit(self) -> int | None:
        """A local worker's memory limit in bytes, as its nanny will read ``memory_limit``
        (``auto``: this machine's memory shared by the threads); None without a limit, or for
        an existing scheduler (whose workers have their own).
        """
        if self.scheduler or self.batch:
            return None
        from distributed.worker_memory import parse_memory_limit

        quiet = logging.Logger("sxtdask-memory-limit")  # its cap to the machine is not news here
        quiet.disabled = True
        try:
            return parse_memory_limit(self.memory_limit, self.threads_per_worker, logger=quiet)
        except (ValueError, TypeError):
            raise ConfigError(
                f"memory limit {self.memory_limit!r} is not a size: say e.g. 4GiB, 500MB, 0.5 (of "
                "this machine's memory), 0 (no limit) or auto") from None

    def refuse_small_memory(self, task_bytes: float, what: str) -> None:
        """Refuse, before any worker starts, a local worker memory limit in which tasks holding
        ``task_bytes`` each (one per thread) cannot run next to the worker's own memory (such a
        worker is paused for good: the run would hang). ``what`` names the work ("measure a
        block of isg").

        Raises
        ------
        ConfigError
            One line with the smallest limit that can work.
        """
        limit = self.worker_memory_limit()
        if limit is None:
            return
        floor = smallest_memory_limit(task_bytes, self.threads_per_worker)
        if limit < floor:
            raise ConfigError(
                f"a worker memory limit of {memory_text(limit)} is too small to {what}: a worker "
                f"holds about {memory_text(WORKER_BASELINE)} of its own, and each of its "
                f"{self.threads_per_worker} thread(s) about {memory_text(task_bytes)} for one "
                f"block; the smallest that can work is {limit_option(floor)}")

    def security(self) -> Security | None:
        """The client's TLS settings: from the options, else Dask's configuration for a ``tls://``
        scheduler, else None (plain TCP).
        """
        if self.tls_ca_file:
            return Security(tls_ca_file=self.tls_ca_file, tls_client_cert=self.tls_cert,
                            tls_client_key=self.tls_key, require_encryption=True)
        if not (self.scheduler or "").startswith("tls://"):
            return None
        security = Security()
        if not (getattr(security, "tls_ca_file", None)
                and getattr(security, "tls_client_cert", None)):
            raise ConfigError(
                f"{self.scheduler} needs TLS certificates: pass --tls-ca-file and --tls-cert "
                "(and --tls-key), or set distributed.comm.tls.ca-file and "
                "distributed.comm.tls.client.cert/key in Dask's configuration"
            )
        return security


def is_local_host(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost``, a loopback or unspecified address, this
    host's name, or an address of one of its interfaces. No name is looked up in DNS.
    """
    import ipaddress
    import socket

    import psutil  # type: ignore[import-untyped]  # (no stubs installed)

    name = host.strip("[]").split("%")[0].lower()
    if name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return name in {socket.gethostname().lower(), socket.gethostname().split(".")[0].lower()}
    if ip.is_loopback or ip.is_unspecified:
        return True
    own = {a.address.split("%")[0].lower() for addrs in psutil.net_if_addrs().values()
           for a in addrs}
    return ip.compressed in own


def warn_if_plain_tcp(address: str) -> bool:
    """Log a one-line warning when ``address`` reaches another machine over plain TCP.

    Over ``tcp://`` (or a bare ``host:port``, which Dask reads as TCP) the task graph, the data
    and the pickled functions travel unencrypted and unauthenticated, and a scheduler runs what
    it is sent; ``tls://`` with certificates protects both sides. A local address (this
    machine's) is not warned about.

    Parameters
    ----------
    address : str
        The scheduler address, as ``--scheduler`` gives it.

    Returns
    -------
    bool
        True when the warning was logged.
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address, strict=False)
        host, _ = parse_host_port(location, default_port=8786)
    except (ValueError, TypeError):
        return False  # Client reports an unusable address itself
    if scheme not in _PLAIN_SCHEMES or is_local_host(host):
        return False
    logger.warning("the scheduler %s is reached over plain %s, unencrypted and unauthenticated: "
                   "use tls://%s with certificates (--tls-ca-file, --tls-cert; or Dask's "
                   "distributed.comm.tls security configuration, see %s)",
                   address, scheme.upper(), location, _TLS_DOCS)
    return True


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


def dashboard_moved(asked: str | None, link: str | None) -> tuple[int, str] | None:
    """``(port asked for, HOST:PORT used)`` when the dashboard went to another port than
    ``asked`` (``HOST:PORT``; a taken port makes distributed pick another), else None.
    """
    from urllib.parse import urlsplit

    wanted = (asked or "").rpartition(":")[2]
    try:
        url = urlsplit(link or "")
        port = url.port
    except ValueError:
        return None
    if not wanted.isdigit() or int(wanted) == 0 or port is None or port == int(wanted):
        return None
    return int(wanted), f"{url.hostname}:{port}"


def _default_workers() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))


class _UserErrorFilter(logging.Filter):
    """Drops distributed's "Compute Failed" record (with its traceback) for sxtdask's own user
    errors: the client gets the error and the CLI says it in one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Compute Failed"):
            return True
        names = {c.__name__ for c in _subclasses(SxtdaskError)}
        text = record.getMessage()
        if "[Errno 28]" in text or "No space left on device" in text:
            return False  # a full disk: the CLI says so in one line
        return not any(f"Exception: '{n}(" in text or f'Exception: "{n}(' in text for n in names)


def _subclasses(cls: type) -> list[type]:
    out: list[type] = [cls]
    subs: list[type] = cls.__subclasses__()
    for sub in subs:
        out.extend(_subclasses(sub))
    return out


class QuietUserErrors(WorkerPlugin):
    """A worker plugin: no worker-side error log for a task that raised an ``SxtdaskError``
    (bad input found while reading a chunk), whose one line the client reports.
    """

    name = "sxtdask-quiet-user-errors"

    def setup(self, worker: Any) -> None:
        log = logging.getLogger("distributed.worker")
        if not any(isinstance(f, _UserErrorFilter) for f in log.filters):
            log.addFilter(_UserErrorFilter())


#: Dask's default for its workers' ``MALLOC_TRIM_THRESHOLD_`` (``distributed.nanny.pre-spawn-environ``).
_DASK_TRIM_THRESHOLD = 65536
#: What sxtdask's local workers get instead: glibc's own limits once its adaptive thresholds
#: have grown (mmap threshold 32 MiB, trim threshold twice that).
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": 32 << 20, "MALLOC_TRIM_THRESHOLD_": 64 << 20}


def worker_environ() -> dict[str, Any]:
    """The environment sxtdask's local workers start with: Dask's
    ``distributed.nanny.pre-spawn-environ`` with Dask's ``MALLOC_TRIM_THRESHOLD_=65536``
    replaced by :data:`MALLOC_SETTINGS`.

    Dask's threshold turns off glibc's adaptive mmap threshold, so every large array a network or
    a filter allocates is a fresh mapping whose pages fault in again. Measured here, the cascade
    on 128×256×256 on one worker of 2 threads: 21.8 s with Dask's setting, 13.0 s with none,
    12.8 s with these (worker peak 1.15, 1.36 and 1.44 GiB: freed memory is kept for reuse).
    The values are set, not removed, because distributed's nanny writes the pre-spawn
    environment into its own process too, and a variable in the process's environment overrides
    the configuration: a value once set there by an earlier Dask cluster would reach every later
    worker (:func:`_malloc_environ` overrides it while sxtdask's workers start). A threshold the
    user configured or exported with another value is kept, with no others added.
    """
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    dask_default = str(_DASK_TRIM_THRESHOLD)
    if (str(env.get("MALLOC_TRIM_THRESHOLD_")) == dask_default
            and os.environ.get("MALLOC_TRIM_THRESHOLD_", dask_default) == dask_default):
        env.update(MALLOC_SETTINGS)
    return env


@contextmanager
def _malloc_environ(env: dict[str, Any]) -> Iterator[None]:
    """Put ``env``'s malloc settings into this process's environment while the workers start
    (the nanny prefers it to the configuration), and what it held before back afterwards.
    """
    ours = {k: str(v) for k, v in env.items() if MALLOC_SETTINGS.get(k) == v}
    before = {k: os.environ.get(k) for k in ours}
    os.environ.update(ours)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _local_cluster(config: ClusterConfig) -> Iterator[LocalCluster]:
    """A local cluster, closed on exit (see :mod:`._shutdown`): its workers never see a Ctrl-C,
    and closing it is quiet. A taken dashboard port is logged at INFO, not warned about.
    """
    cluster: LocalCluster | None = None
    graceful = False
    try:
        # A Ctrl-C while the workers start comes once the cluster exists (then it is closed).
        env = worker_environ()
        with sigint_deferred(), warnings.catch_warnings(), dask.config.set(
                {"distributed.nanny.pre-spawn-environ": env}), _malloc_environ(env):
            warnings.filterwarnings("ignore", message=r"Port \d+ is already in use",
                                    category=UserWarning)
            cluster = _local_cuda_cluster(config) if config.gpu else LocalCluster(
                n_workers=config.workers or _default_workers(),
                threads_per_worker=config.threads_per_worker,
                memory_limit=config.memory_limit,
                dashboard_address=config.dashboard_address,
                processes=True,
                silence_logs=logging.WARNING,
            )
        moved = dashboard_moved(config.dashboard_address, cluster.dashboard_link)
        if moved:
            logger.info("dashboard port %s is taken; using %s", *moved)
        yield cluster
        graceful = True
    finally:
        if cluster is not None:
            close_local_cluster(cluster, graceful=graceful)


@contextmanager
def connect(config: ClusterConfig = ClusterConfig()) -> Iterator[Client]:
    """A Dask client for the run; the local cluster (if any) is closed on exit.

    The dashboard link is logged at INFO (``client.dashboard_link``). Every worker gets the
    model cache (:class:`sxtdask.models.ModelCache`, a worker plugin). A local cluster's workers
    ignore Ctrl-C (this process gets it and closes them) and close quietly: given time at a
    normal end, at once after an error or an interruption.
    """
    if config.scheduler:
        security = config.security()
        warn_if_plain_tcp(config.scheduler)
        try:
            client = Client(config.scheduler, timeout="10s", security=security)
        except (OSError, TimeoutError) as err:
            raise SxtdaskError(f"cannot reach the scheduler at {config.scheduler}: {err}") from err
        with client:
            logger.info("connected to %s; dashboard: %s", config.scheduler, client.dashboard_link)
            register_model_cache(client)
            client.register_plugin(QuietUserErrors(), name=QuietUserErrors.name)
            yield client
        return
    if config.batch:
        from ._jobqueue import jobqueue_cluster

        with jobqueue_cluster(config.batch, threads=config.threads_per_worker,
                              memory_limit=config.memory_limit,
                              dashboard_address=config.dashboard_address, jobs=config.jobs,
                              min_jobs=config.min_jobs, max_jobs=config.max_jobs) as cluster, \
                Client(cluster) as client:
            logger.info("batch-job cluster at %s; dashboard: %s", cluster.scheduler_address,
                        client.dashboard_link)
            register_model_cache(client)
            client.register_plugin(QuietUserErrors(), name=QuietUserErrors.name)
            yield client
        return
    with _local_cluster(config) as cluster, Client(cluster) as client:
        logger.info("local cluster with %d workers; dashboard: %s",
                    len(cluster.workers), client.dashboard_link)
        register_model_cache(client)
        client.register_plugin(QuietUserErrors(), name=QuietUserErrors.name)
        client.register_plugin(QuietShutdown(), name=QuietShutdown.name)
        yield client
