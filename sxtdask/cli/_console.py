"""What a command shows while it runs, and sxtdask's log records and warnings during a command.

:class:`Console` draws rich progress bars and summaries, writes JSON lines (``--json-log``) or
stays silent (``--quiet``); :func:`configure_logging` sends the ``sxtdask`` logger's records to
stderr or into the console's JSON lines; :func:`write_json` writes a command's JSON report.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sxtdask._fs import write_atomic

__all__ = ["Console", "configure_logging", "write_json"]


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

    # ---- JSON lines

    def emit(self, event: str, **fields: Any) -> None:
        """Write one JSON event line (only with ``json_log``)."""
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
            stream = self._stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()

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
                return
        print(text, flush=True)

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
                from rich.console import Console as RichConsole

                with RichConsole(stderr=False).status(label):
                    yield

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
                                      MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
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


_RESERVED = frozenset({"event", "time", "elapsed", "command", "status"})


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
            self.console.emit("log", level=record.levelname, logger=record.name,
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
