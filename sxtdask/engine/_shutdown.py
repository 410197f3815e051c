"""A local cluster's start and end without distributed's noise: Ctrl-C reaches only this process
(never the workers), and closing says nothing when nothing went wrong.

- Workers start with SIGINT blocked (:func:`sigint_deferred` around the cluster's creation: the
  event loop thread and every worker process it spawns inherit the mask). A terminal's Ctrl-C
  reaches the whole process group; the workers ignore it, this process raises
  ``KeyboardInterrupt``, and the cluster's close stops the workers (no traceback per worker).
- :func:`close_local_cluster` closes the workers before the scheduler, with time to finish (a
  normal end) or at once (an error or Ctrl-C: their running tasks are abandoned). Meanwhile
  :class:`ShutdownNoise` drops the records that closing connections and cancelled tasks leave
  (``Worker process still alive … killing``, ``CancelledError``, ``Stream is closed``, a
  heartbeat that met a closed connection), here and, through :class:`QuietShutdown`, on the
  workers once they are closing; any other record, a worker's real error included, still shows.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["CLOSE_GRACE", "QuietShutdown", "ShutdownNoise", "close_local_cluster",
           "sigint_deferred"]

logger = logging.getLogger(__name__)

#: Seconds a worker gets to close at a normal end (distributed's own 5 s is short on a loaded
#: machine, and its nanny then kills the worker with a warning); after an error or Ctrl-C, 2 s.
CLOSE_GRACE = 20.0
_CLOSE_NOW = 2.0

#: What closing connections and cancelled tasks say (in a record's message or its exception).
_NOISE = ("CancelledError", "CommClosedError", "StreamClosedError", "Stream is closed",
          "ConnectionPool closing", "Worker process still alive after", "during heartbeat",
          "lose already computed task")


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """SIGINT blocked in this thread inside (and in the threads and processes it starts, which
    keep it blocked); a Ctrl-C meanwhile raises ``KeyboardInterrupt`` once it ends.
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    _start_resource_tracker()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _start_resource_tracker() -> None:
    """multiprocessing's resource tracker, started now if it is not running: started later (at
    the first queue a nanny makes, in the cluster's event loop thread) it would unblock SIGINT
    in that thread (CPython's ``ensure_running`` unblocks SIGINT and SIGTERM after spawning
    the tracker, rather than restoring the mask), and the workers spawned from there would get
    the terminal's Ctrl-C.
    """
    try:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    except Exception as err:  # noqa: BLE001 - only the workers' Ctrl-C is at stake
        logger.debug("multiprocessing's resource tracker: %s", err)


class ShutdownNoise(logging.Filter):
    """Drops distributed's records about closed connections and cancelled tasks while
    ``closing()`` is true (a handler filter: it sees every ``distributed.*`` record).
    """

    def __init__(self, closing: Callable[[], bool]) -> None:
        super().__init__()
        self.closing = closing

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("distributed") or not self.closing():
            return True
        return not _is_noise(record.getMessage(), record.exc_info[1] if record.exc_info else None)


def _is_noise(message: str, error: BaseException | None) -> bool:
    """Whether a message (and its exception, with what that was raised from) is about a closed
    connection or a cancelled task.
    """
    text = message
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text += f" {type(error).__name__}: {error}"
        error = error.__cause__ or error.__context__
    return any(word in text for word in _NOISE)


def _quiet_loop_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The cluster's event loop, once it closes: a future that failed on a closed connection and
    that nobody awaited any more ("Future exception was never retrieved") is not reported.
    """
    if _is_noise(str(context.get("message", "")), context.get("exception")):
        return
    loop.default_exception_handler(context)


@contextmanager
def _filtering(noise: ShutdownNoise) -> Iterator[None]:
    """``noise`` on the handlers of distributed's logger (where its records are printed)."""
    handlers = list(logging.getLogger("distributed").handlers)
    for handler in handlers:
        handler.addFilter(noise)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(noise)


class QuietShutdown(WorkerPlugin):
    """A worker plugin: once the worker is closing, its records about closed connections and
    cancelled tasks are dropped (:class:`ShutdownNoise`); until then, everything shows.
    """

    name = "sxtdask-quiet-shutdown"

    def setup(self, worker: Any) -> None:
        from distributed.core import Status

        done = {Status.closing, Status.closing_gracefully, Status.closed, Status.failed}
        self._noise = ShutdownNoise(lambda: getattr(worker, "status", None) in done)
        for handler in logging.getLogger("distributed").handlers:
            if not any(isinstance(f, ShutdownNoise) for f in handler.filters):
                handler.addFilter(self._noise)


async def _close_workers(cluster: Any, timeout: float) -> None:
    workers = list(getattr(cluster, "workers", {}).values())
    await asyncio.gather(*(w.close(timeout=timeout) for w in workers), return_exceptions=True)


def close_local_cluster(cluster: Any, *, graceful: bool) -> None:
    """Close ``cluster`` (a ``LocalCluster``, its client closed first): the workers, with
    :data:`CLOSE_GRACE` seconds to finish when ``graceful`` (else 2 s, then killed), then the
    scheduler. Shutdown noise is dropped meanwhile; a Ctrl-C waits until the close is done.
    """
    loop = getattr(getattr(cluster, "loop", None), "asyncio_loop", None)
    if loop is not None:
        loop.set_exception_handler(_quiet_loop_errors)  # it serves this cluster only
    with sigint_deferred(), _filtering(ShutdownNoise(lambda: True)):
        try:
            cluster.sync(_close_workers, cluster, CLOSE_GRACE if graceful else _CLOSE_NOW)
        except Exception as err:  # noqa: BLE001 - the cluster's own close still runs
            logger.debug("closing the workers: %s", err)
        finally:
            cluster.close()
