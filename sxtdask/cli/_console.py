"""What a command shows while it runs, and sxtdask's log records and warnings during a command.

:class:`Console` draws rich progress bars and summaries, writes JSON lines (``--json-log``) or
stays silent (``--quiet``); :func:`configure_logging` sends the ``sxtdask`` logger's records to
stderr or into the console's JSON lines; :func:`write_json` writes a command's JSON report.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, cast

from sxtdask._fs import write_atomic

__all__ = ["Console", "configure_logging", "discard_stdout", "write_json"]


class Console:
    """What the command shows while it runs: rich progress bars and summaries (the default), JSON
    lines for batch logs (``json_log``), or nothing (``quiet``).

    Progress bars opened while another is live share its display: an outer bar (for example one
    over the tomograms of an archive) stays, and the bars of the stages inside it are drawn under it
    and removed when they finish. Every method may be called from any thread.

    With ``json_log`` every event is one JSON object per line on **stdout**: ``{"event": ...,
    "time": ISO 8601 UTC, "elapsed": seconds, "command": ...}`` plus ``stage``, ``done``/``total``
    or ``message``; events are ``start``, ``progress``, ``end`` (stages), ``message`` (summaries),
    ``log`` (sxtdask's log records), ``summary`` (the command's result) and ``error``. With
    ``quiet`` as well, only ``summary`` and ``error`` are written.

    Parameters
    ----------
    quiet : bool
        No bars, no summaries.
    json_log : bool
        JSON lines instead of bars and text.
    command : str, optional
        The command word, written into every JSON event.
    stream : text stream, optional
        Where JSON lines go (default: ``sys.stdout`` at the time of writing).
    progress_interval : float
        Seconds between two JSON ``progress`` events of one stage (a stage's every 10 % and its
        end are always written).
    """

    def __init__(self, quiet: bool = False, json_log: bool = False, *, command: str | None = None,
                 stream: TextIO | None = None, progress_interval: float = 5.0) -> None:
        self.quiet = quiet
        self.json_log = json_log
        self.command = command
        self.progress_interval = progress_interval
        self._stream = stream
        self._t0 = time.monotonic()
        self._lock = threading.RLock()
        self._live: Any = None  # the rich Progress that open bars share
        self._open = 0  # bars and spinners drawn in it
        self._gone = False  # stdout's reader went away: writes go nowhere
        self._raised = False  # ... and the main thread was told (once)

    # ---- JSON lines

    def emit(self, event: str, **fields: Any) -> None:
        """Write one JSON event line (only with ``json_log``)."""
        self._emit(event, fields)

    def log_event(self, **fields: Any) -> None:
        """A log record as a JSON ``log`` line; never raises (a closed stdout is told later)."""
        self._emit("log", fields, tell=False)

    def _emit(self, event: str, fields: dict[str, Any], tell: bool = True) -> None:
        if not self.json_log:
            return
        record = {"event": event,
                  "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                  "elapsed": round(time.monotonic() - self._t0, 3)}
        if self.command:
            record["command"] = self.command
        record.update(fields)
        line = json.dumps(record, default=_json_default)
        with self._lock:
            self._write(self._stream or sys.stdout, line + "\n", tell=tell)

    def _write(self, stream: TextIO, text: str, tell: bool = True) -> None:
        """Write and flush; a closed pipe (``sxtdask ... | head -1``) ends the command quietly
        (``tell``: this output may raise it; a log record's may not).
        """
        if tell:
            self.check_stdout()
        try:
            stream.write(text)
            stream.flush()
        except BrokenPipeError:
            self.stdout_closed(tell)

    def stdout_closed(self, tell: bool = True) -> None:
        """Stdout's reader went away: later writes go to /dev/null, and the main thread gets one
        ``BrokenPipeError`` (now with ``tell``, else at its next output), which ends the command
        quietly.
        """
        self._gone = True
        discard_stdout()
        if tell:
            self.check_stdout()

    def check_stdout(self) -> None:
        """Raise ``BrokenPipeError`` once, in the main thread, after stdout's reader went away."""
        if self._gone and not self._raised and threading.current_thread() is threading.main_thread():
            self._raised = True
            raise BrokenPipeError(errno.EPIPE, "stdout was closed")

    def summary(self, result: dict[str, Any]) -> None:
        """The command's result as the last JSON line (nothing without ``json_log``)."""
        self.emit("summary", status="ok", **{k: v for k, v in result.items() if k not in _RESERVED})

    def error(self, message: str) -> None:
        """A user error as a JSON line (the CLI also prints it on stderr)."""
        self.emit("error", status="error", message=message)

    # ---- text and bars

    def say(self, text: str, **fields: Any) -> None:
        """A line of summary; ``fields`` go into its JSON event (e.g. ``dashboard=URL``)."""
        if self.quiet:
            return
        if self.json_log:
            self.emit("message", message=text, **fields)
            return
        with self._lock:
            if self._live is not None:
                self._live.console.print(text, markup=False, highlight=False, soft_wrap=True)
                self.check_stdout()
                return
            self._write(sys.stdout, text + "\n")

    def note(self, text: str) -> None:
        """A notice (e.g. a taken dashboard port): one line ``sxtdask: TEXT`` on stderr, or a
        ``log`` event among the JSON lines; nothing with ``quiet``.
        """
        if self.quiet:
            return
        if self.json_log:
            self.emit("log", level="NOTICE", logger="sxtdask.cli", message=text)
            return
        print(f"sxtdask: {text}", file=sys.stderr, flush=True)

    @contextmanager
    def steps(self, label: str, total: int | None) -> Iterator[Callable[..., None]]:
        """A progress bar (or JSON progress events) fed by ``callback(done, total, note=None)``;
        ``total`` None until the first callback says it; ``note`` (e.g. a running loss) is shown
        after the label.
        """
        if self.quiet:
            yield lambda done, total, note=None: None
        elif self.json_log:
            with self._json_stage(label, total) as update:
                yield update
        else:
            from rich.markup import escape

            with self._bar(label, total) as (bar, task):
                def update(done: int, total: int, note: str | None = None) -> None:
                    extra = {} if note is None else {"description": escape(f"{label} {note}")}
                    bar.update(task, completed=done, total=total, **extra)
                    self.check_stdout()  # a closed stdout seen by the bar's refresh thread

                yield update

    @contextmanager
    def busy(self, label: str) -> Iterator[None]:
        """A spinner for a step that reports no progress of its own."""
        if self.quiet:
            yield
        elif self.json_log:
            with self._json_stage(label, None):
                yield
        else:
            with self._lock:
                nested = self._live is not None
            if nested:
                with self._bar(label, None):
                    yield
            else:
                with self._rich_console().status(label):
                    yield
                self.check_stdout()

    def compute(self, client: Any, collection: Any, label: str) -> Any:
        """Compute a Dask collection on ``client`` with a progress bar over its tasks."""
        future = client.compute(collection)
        if not self.quiet:
            with self.steps(label, None) as update:
                _TaskBar([future], update, scheduler=client.scheduler.address)
        return future.result()

    @contextmanager
    def _json_stage(self, label: str, total: int | None) -> Iterator[Callable[..., None]]:
        state: dict[str, Any] = {"time": time.monotonic(), "tenth": 0, "done": 0, "total": total}

        def update(done: int, total: int, note: str | None = None) -> None:
            now = time.monotonic()
            tenth = 10 * done // total if total else 0
            with self._lock:
                new = done != state["done"] or total != state["total"]
                state["done"], state["total"] = done, total
                if not new or (now - state["time"] < self.progress_interval
                               and tenth == state["tenth"] and done != total):
                    return
                state["time"], state["tenth"] = now, tenth
            self.emit("progress", stage=label, done=done, total=total,
                      **({} if note is None else {"note": note}))

        t0 = time.monotonic()
        self.emit("start", stage=label, done=0, total=total)
        ok = False
        try:
            yield update
            ok = True
        finally:
            self.emit("end", stage=label, done=state["done"], total=state["total"], ok=ok,
                      seconds=round(time.monotonic() - t0, 3))

    @contextmanager
    def _bar(self, label: str, total: int | None) -> Iterator[tuple[Any, Any]]:
        """A task in the shared live display (started by the first bar, stopped by the last)."""
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with self._lock:
            nested = self._live is not None
            if not nested:
                self._live = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), transient=False,
                                      console=self._rich_console())
                self._live.start()
            self._open += 1
            live = self._live
            task = live.add_task(escape(label), total=total)
        try:
            yield live, task
        finally:
            with self._lock:
                if nested:  # an inner stage: its bar goes once it is done
                    live.remove_task(task)
                self._open -= 1
                if self._open == 0:
                    live.stop()
                    self._live = None
        self.check_stdout()

    def _rich_console(self) -> Any:
        """A rich console on today's stdout, through :class:`_Guarded` (a closed pipe is quiet)."""
        from rich.console import Console as RichConsole

        return RichConsole(file=cast(TextIO, _Guarded(sys.stdout, self)))


_RESERVED = frozenset({"event", "time", "elapsed", "command", "status"})


class _Guarded:
    """A text stream for rich: a write to a closed pipe (from any thread, rich's refresh thread
    included) tells the console (:meth:`Console.stdout_closed`) instead of raising there.
    """

    def __init__(self, stream: TextIO, console: Console) -> None:
        self._stream, self._console = stream, console

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:  # told to the main thread after rich returns (rich would exit)
            self._console.stdout_closed(tell=False)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._console.stdout_closed(tell=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def discard_stdout() -> None:
    """Point stdout at /dev/null, its reader having gone: later writes (Python's own flush at
    exit included) go nowhere instead of raising ``BrokenPipeError``.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file behind stdout (tests)
        pass


def _json_default(value: Any) -> Any:
    """JSON for what results hold besides plain types: paths, NumPy scalars and arrays, tuples."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _task_bar_class() -> type:
    """A distributed progress listener that draws into our bar instead of stdout."""
    from distributed.diagnostics.progressbar import TextProgressBar

    class TaskBar(TextProgressBar):
        def __init__(self, keys: Any, update: Callable[[int, int], None], **kw: Any) -> None:
            self._update = update
            super().__init__(keys, **kw)

        def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:
            self._update(all - remaining, all)

        def _draw_stop(self, **kwargs: Any) -> None:
            pass

    return TaskBar


def _TaskBar(keys: Any, update: Callable[[int, int], None], **kw: Any) -> Any:
    return _task_bar_class()(keys, update, **kw)


class _JsonLogHandler(logging.Handler):
    """Log records as the console's JSON ``log`` events."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.log_event(level=record.levelname, logger=record.name,
                                   message=record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure_logging(verbose: int, console: Console | None = None) -> None:
    """sxtdask's log records: text on stderr, or JSON lines with the console's other events when it
    writes JSON (``--json-log``).
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler: logging.Handler
    if console is not None and console.json_log:
        handler = _JsonLogHandler(console)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("sxtdask: %(levelname)s: %(message)s"))
    root = logging.getLogger("sxtdask")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # The library both logs and warns about damaged headers and constant volumes: show it once.
    warnings.filterwarnings("ignore", module=r"sxtdask\..*")
    from sxtdask.io import HeaderWarning
    from sxtdask.stats import ConstantVolumeWarning

    warnings.simplefilter("ignore", HeaderWarning)
    warnings.simplefilter("ignore", ConstantVolumeWarning)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path``, atomically (readers never see half a file)."""
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
