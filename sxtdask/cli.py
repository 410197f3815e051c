"""The ``sxtdask`` command. The only module that prints, configures logging and draws progress bars.

User errors (``SxtdaskError``) are printed as one line on stderr, without a traceback, and the
command exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .errors import ConfigError, OutputError, SxtdaskError

logger = logging.getLogger("sxtdask.cli")

TASKS = ("cell", "mito", "isg", "isg-instances")
METHODS = {"cell": ("unet",), "mito": ("unet",), "isg": ("unet",),
           "isg-instances": ("classical", "unet", "maskrcnn")}
DEFAULT_METHOD = {"cell": "unet", "mito": "unet", "isg": "unet", "isg-instances": "unet"}


# --------------------------------------------------------------------------- parsing helpers


def _triple(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three integers Z,Y,X") from None
    if len(values) != 3 or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must be three positive integers Z,Y,X")
    return values  # type: ignore[return-value]


def _tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks or len(set(tasks)) != len(tasks):
        raise argparse.ArgumentTypeError(
            f"{text!r}: tasks must be distinct values of {', '.join(TASKS)}")
    return tasks


def _models(values: list[str] | None, tasks: tuple[str, ...]) -> dict[str, Path | None]:
    """``--model`` values → a checkpoint per task (a bare PATH when there is one task)."""
    out: dict[str, Path | None] = dict.fromkeys(tasks)
    for value in values or []:
        task, sep, path = value.partition("=")
        if not sep and len(tasks) == 1:
            task, path = tasks[0], value
        elif task not in tasks:
            raise ConfigError(f"--model {value!r}: say which task it is for, as TASK=PATH "
                              f"(tasks: {', '.join(tasks)})")
        out[task] = Path(path)
    return out


def add_model_options(p: argparse.ArgumentParser, *, chunks_help: str) -> None:
    """The options that choose and run the segmenters (``segment``, ``archive``)."""
    p.add_argument("--method", default=None, metavar="{unet,maskrcnn,classical}",
                   help="method (default: unet, with the bundled weights unless --model is given)")
    p.add_argument("--model", action="append", default=None, metavar="[TASK=]PATH",
                   help="network checkpoint (a reference *_best.pth or sxtdask's own); with "
                        "several tasks, one TASK=PATH each")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where networks run (default: cuda when a GPU is visible)")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (default 8)")
    p.add_argument("--chunks", type=_triple, default=None, metavar="Z,Y,X", help=chunks_help)
    p.add_argument("--halo", type=_triple, default=None, metavar="Z,Y,X",
                   help="voxels read around each block (default: the method's)")


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workers")
    g.add_argument("--workers", type=int, default=None, help="local worker processes (default: cores, at most 4)")
    g.add_argument("--threads-per-worker", type=int, default=1, help="threads per local worker (default 1)")
    g.add_argument("--memory-limit", default="auto", help="memory per local worker, e.g. 4GiB (default auto)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="use an existing Dask scheduler (tcp://HOST:8786, or tls://HOST:8786 with "
                        "the --tls-* files) instead of a local cluster")
    g.add_argument("--dashboard-address", default="127.0.0.1:8787",
                   help="local dashboard address (default 127.0.0.1:8787, this machine only; a busy "
                        "port picks another; 0.0.0.0:8787 opens it to the network)")
    g.add_argument("--tls-ca-file", default=None, metavar="PEM",
                   help="tls:// scheduler: the CA certificate that signed the cluster's certificates")
    g.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="tls:// scheduler: this client's certificate")
    g.add_argument("--tls-key", default=None, metavar="PEM",
                   help="tls:// scheduler: this client's private key (default: in --tls-cert)")
    g.add_argument("--performance-report", type=Path, default=None, metavar="FILE.html",
                   help="save distributed's performance report of the run (task stream, worker "
                        "profiles, bandwidth) as one HTML file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sxtdask",
        description="Segment soft X-ray tomograms of whole cells at archive scale, on Dask.",
    )
    parser.add_argument("--version", action="version", version=f"sxtdask {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="tomogram (.mrc/.rec/.am/.tif/.npy) → OME-Zarr")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--chunks", type=_triple, default=None, metavar="Z,Y,X",
                   help="chunk shape (default: 32 slices of the full plane)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    p = sub.add_parser("synth", help="write a synthetic SXT cell (MRC, LAC per voxel: µm⁻¹ × voxel "
                                     "size in µm, like real reconstructions) and its ground truth "
                                     "(.gt.zarr)")
    p.add_argument("output", type=Path)
    p.add_argument("--shape", type=_triple, default=(128, 256, 256), metavar="Z,Y,X")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voxel-size", type=float, default=30.0, help="nanometres (default 30)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("segment", help="segment an OME-Zarr image chunk by chunk; writes labels/<name>")
    p.add_argument("data", type=Path)
    p.add_argument("--task", required=True, type=_tasks, metavar="{cell,mito,isg,isg-instances}[,...]",
                   help="what to segment; several, comma-separated, share one read of each chunk")
    add_model_options(p, chunks_help="block shape (default: the image's chunks)")
    p.add_argument("--report", type=Path, default=None, help="write a JSON run report here")
    p.add_argument("--overwrite", action="store_true", help="replace existing labels")
    _add_cluster_options(p)

    p = sub.add_parser("stats", help="per-instance table (CSV or Parquet) of a label image")
    p.add_argument("data", type=Path)
    p.add_argument("--labels", required=True, help="label image name, e.g. isg")
    p.add_argument("--out", required=True, type=Path, help="TABLE.csv or TABLE.parquet")
    p.add_argument("--overwrite", action="store_true")
    _add_cluster_options(p)

    p = sub.add_parser("demo", help="synth → convert → segment → stats → PNG, on a small phantom")
    p.add_argument("--out", type=Path, default=Path("sxtdask-demo"), help="folder (default ./sxtdask-demo)")
    p.add_argument("--shape", type=_triple, default=(128, 256, 256), metavar="Z,Y,X")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="unet", choices=("unet", "classical"),
                   help="unet: the bundled cell, mito and ISG U-Nets (default); classical: ISGs only")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    _add_cluster_options(p)
    for module in _command_modules():
        module.add_parser(sub)
    return parser


def _command_modules() -> list[Any]:
    """The commands defined in ``sxtdask.commands`` (one module each: ``NAME``, ``add_parser(sub)``
    and ``run(args, console) -> dict``)."""
    import importlib
    import pkgutil

    from . import commands

    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"{commands.__name__}.{name}") for name in names]


# --------------------------------------------------------------------------- output helpers


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
        after the label."""
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

    class TaskBar(TextProgressBar):  # type: ignore[misc]
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


def _configure_logging(verbose: int, console: Console | None = None) -> None:
    """sxtdask's log records: text on stderr, or JSON lines with the console's other events when it
    writes JSON (``--json-log``)."""
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
    from .io import HeaderWarning
    from .stats import ConstantVolumeWarning

    warnings.simplefilter("ignore", HeaderWarning)
    warnings.simplefilter("ignore", ConstantVolumeWarning)


def _check_new_file(path: Path, overwrite: bool) -> None:
    from ._paths import check_new_path

    check_new_path(path, overwrite)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _cluster_config(args: argparse.Namespace) -> Any:
    from .engine import ClusterConfig

    return ClusterConfig(
        scheduler=args.scheduler, workers=args.workers, threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit, dashboard_address=args.dashboard_address,
        tls_ca_file=getattr(args, "tls_ca_file", None), tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
    )


@contextmanager
def _open_cluster(args: argparse.Namespace, con: Console, config: Any = None) -> Iterator[Any]:
    """The run's Dask client (``config``, default from the cluster options): its dashboard link is
    said first, and the work inside is recorded into ``--performance-report`` when given."""
    from .engine import connect

    report = getattr(args, "performance_report", None)
    if report is not None:
        _check_new_file(report, overwrite=True)  # a clear error before any cluster starts
    with connect(config if config is not None else _cluster_config(args)) as client:
        con.say(f"dashboard: {client.dashboard_link}", dashboard=client.dashboard_link)
        with _performance_report(report):
            yield client


@contextmanager
def _performance_report(path: Path | None) -> Iterator[None]:
    """distributed's performance report of the work inside (needs a current client), written under a
    temporary name and renamed to ``path`` only when the work succeeded."""
    if path is None:
        yield
        return
    from distributed import performance_report

    tmp = path.with_name(f".{path.name}.partial")
    try:
        with performance_report(filename=str(tmp)):
            yield
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _span_name(stage: str, data: Path) -> str:
    """``"segment cell.zarr"``: the dashboard's name for one command's work on one store."""
    return f"{stage} {data.resolve().name or data}"


# --------------------------------------------------------------------------- commands


def cmd_convert(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    from .io import open_image, open_volume, write_image

    t0 = time.perf_counter()
    with open_volume(args.input) as vol:
        nslabs = -(-vol.shape[0] // (args.chunks[0] if args.chunks else min(32, vol.shape[0])))
        with con.steps("converting", nslabs) as tick:
            out = write_image(vol, args.output, chunks=args.chunks, overwrite=args.overwrite,
                              progress=tick)
    img = open_image(out)
    con.say(f"wrote {out}: shape {img.data.shape} {img.data.dtype}, voxel "
            f"{'×'.join(f'{v:g}' for v in img.voxel_size_nm)} nm, chunks {img.data.chunksize}, "
            f"{img.levels} levels ({time.perf_counter() - t0:.1f} s)")
    return {"output": str(out), "shape": img.data.shape}


def cmd_synth(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    from .io import open_labels
    from .phantoms import write_phantom

    t0 = time.perf_counter()
    with con.busy(f"synthesising a {'×'.join(map(str, args.shape))} phantom"):
        mrc, gt = write_phantom(args.output, shape=args.shape, seed=args.seed,
                                voxel_size_nm=args.voxel_size, overwrite=args.overwrite)
    n = int(open_labels(gt, "isg").max().compute())
    con.say(f"wrote {mrc} and ground truth {gt}: shape {args.shape}, {n} ISGs, seed {args.seed} "
            f"({time.perf_counter() - t0:.1f} s)")
    return {"image": str(mrc), "ground_truth": str(gt), "n_isg": n}


def _make_segmenter(args: argparse.Namespace) -> Any:
    from .segmenters import CombinedSegmenter

    models = _models(args.model, args.task)
    if args.method is not None and len(args.task) > 1:
        raise ConfigError("--method applies to one task; with several, each uses its default")
    parts = [_one_segmenter(args, task, args.method, models[task]) for task in args.task]
    return parts[0] if len(parts) == 1 else CombinedSegmenter(tuple(parts))


def _one_segmenter(args: argparse.Namespace, task: str, method: str | None,
                   model: Path | None) -> Any:
    from .segmenters import (
        ClassicalISG,
        MaskRCNNISG,
        Task,
        UNetISGInstances,
        UNetSegmenter,
    )

    method = method or DEFAULT_METHOD[task]
    if method not in METHODS[task]:
        raise ConfigError(
            f"method {method!r} is not available for task {task!r} (available: "
            f"{', '.join(METHODS[task])})"
        )
    if method == "classical":
        if model is not None:
            raise ConfigError("--model is for network methods; the classical method has no model")
        return ClassicalISG() if args.halo is None else ClassicalISG(halo=args.halo)
    if method == "maskrcnn":
        seg = MaskRCNNISG(device=args.device, batch_size=args.batch_size).load_model(model)
        return seg if args.halo is None else dataclasses.replace(seg, halo=args.halo)
    unet_task = Task.ISG if task == "isg-instances" else Task(task)
    unet = UNetSegmenter(task=unet_task, device=args.device, batch_size=args.batch_size)
    unet = unet.load_model(model)
    if task != "isg-instances":
        return unet
    seg = UNetISGInstances(unet=unet)
    return seg if args.halo is None else dataclasses.replace(seg, halo=args.halo)


def run_segment(
    data: Path, segmenter: Any, client: Any, con: Console, *, chunks: Any = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Statistics → chunked segmentation → pyramids; returns the run report."""
    from .engine import load_counts, segment_store
    from .io import open_image
    from .stats import check_stats, global_stats

    img = open_image(data)
    stages: dict[str, float] = {}
    t = time.perf_counter()
    stats = con.compute(client, global_stats(img.data), "global statistics")
    check_stats(stats, str(data))
    stages["statistics"] = time.perf_counter() - t
    t = time.perf_counter()
    run = segment_store(data, segmenter, stats, chunks=chunks, overwrite=overwrite)
    counts = con.compute(client, run.graph, f"segmenting {run.n_chunks} chunks + relabel")
    stages["segment_and_relabel"] = time.perf_counter() - t
    t = time.perf_counter()
    with con.busy("writing label pyramids"):
        outputs = run.finish()
    stages["pyramids"] = time.perf_counter() - t
    loads = client.run(load_counts)
    return {
        "sxtdask_version": __version__,
        "input": str(data),
        "tasks": [p.task.value for p in getattr(segmenter, "parts", (segmenter,))],
        "methods": [type(p).__name__ for p in getattr(segmenter, "parts", (segmenter,))],
        "models": [getattr(getattr(p, "unet", p), "model_path", None)
                   for p in getattr(segmenter, "parts", (segmenter,))],
        "chunk_count": run.n_chunks,
        "chunks_total": run.chunks_total,
        "chunks_recomputed": run.chunks_computed,  # an interrupted run's complete blocks are
        "chunks_skipped": run.chunks_reused,  # skipped (their saved results are loaded)
        "chunk_shape": [c[0] for c in run.grid.chunks],
        "halo": list(run.grid.halo),
        "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
        "instance_count": counts,
        "outputs": outputs,
        "workers": len(loads),
        "model_loads_per_worker": loads,
        "dashboard": client.dashboard_link,
        "intensity_stats": {k: getattr(stats, k) for k in ("min", "max", "mean", "std", "p_low", "p_high")},
    }


def cmd_segment(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    from distributed import span

    from .engine import uses_gpu
    from .io import labels_complete, open_image

    open_image(args.data)  # clear errors before any cluster starts or any statistics run
    if args.report is not None:
        _check_new_file(args.report, overwrite=True)
    segmenter = _make_segmenter(args)
    for spec in segmenter.outputs:
        if not args.overwrite and labels_complete(args.data, spec.name):
            raise OutputError(
                f"{args.data}: label image {spec.name!r} exists; pass --overwrite to replace it"
            )
    t0 = time.perf_counter()
    config = _cluster_config(args)
    if uses_gpu(segmenter) and not args.scheduler:
        config = dataclasses.replace(config, gpu=True)  # dask-cuda: one worker per GPU
    # Workers open the store by path, in their own working folders (remote ones too).
    data = args.data.absolute()
    with _open_cluster(args, con, config) as client, span(_span_name("segment", data)):
        report = run_segment(data, segmenter, client, con, chunks=args.chunks,
                             overwrite=args.overwrite)
    report["total_seconds"] = round(time.perf_counter() - t0, 3)
    if args.performance_report is not None:
        report["performance_report"] = str(args.performance_report)
    if args.report is not None:
        _write_json(args.report, report)
    n = ", ".join(f"{k}: {v}" for k, v in report["instance_count"].items())
    con.say(f"{args.data}: {report['chunk_count']} chunks, {n} instances; wrote "
            f"{', '.join(report['outputs'])} ({report['total_seconds']:.1f} s)")
    return report


def run_stats(data: Path, labels: str, out: Path, client: Any, con: Console, *,
              overwrite: bool = False) -> Any:
    from .io import open_image, open_labels
    from .measure import instance_table, write_table

    img = open_image(data)
    lab = open_labels(data, labels)
    table = con.compute(client, instance_table(lab, img.data, spacing_nm=img.voxel_size_nm),
                        f"measuring {labels}")
    write_table(table, out, overwrite=overwrite)
    return table


def cmd_stats(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    from distributed import span

    from .io import open_labels

    if args.out.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(f"{args.out}: the table must end in .csv or .parquet")
    _check_new_file(args.out, args.overwrite)
    open_labels(args.data, args.labels)  # a clear error before any cluster starts
    data = args.data.absolute()  # workers open the store by path, in their own working folders
    with _open_cluster(args, con) as client, span(_span_name(f"stats {args.labels}", data)):
        table = run_stats(data, args.labels, args.out, client, con, overwrite=args.overwrite)
    con.say(f"wrote {args.out}: {len(table)} instances of {args.labels!r}")
    return {"rows": len(table), "output": str(args.out)}


def _dice(truth: Any, pred: Any) -> float:
    import numpy as np

    total = int(np.count_nonzero(truth)) + int(np.count_nonzero(pred))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(truth & pred)) / total


def cmd_demo(args: argparse.Namespace, con: Console) -> dict[str, Any]:
    """synth → convert → segment → stats → PNG, in ``args.out`` (its own files are replaced)."""
    import numpy as np

    from ._demo import save_figure
    from .io import open_image, open_labels, open_volume, write_image
    from .measure import match_instances
    from .phantoms import write_phantom
    from .segmenters import CombinedSegmenter

    t0 = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    unet = args.method == "unet"
    tasks = ("cell", "mito", "isg-instances") if unet else ("isg-instances",)
    opts = argparse.Namespace(device=args.device, batch_size=8, halo=None)
    parts = [_one_segmenter(opts, task, args.method, None) for task in tasks]
    segmenter = parts[0] if len(parts) == 1 else CombinedSegmenter(tuple(parts))
    with con.busy("synthesising a phantom"):
        mrc, gt = write_phantom(out / "phantom.mrc", shape=args.shape, seed=args.seed,
                                overwrite=True)
    con.say(f"1/5 synthesised {mrc} (ground truth {gt})")
    data = out / "phantom.zarr"
    with open_volume(mrc) as vol, con.steps("converting", 1) as tick:
        write_image(vol, data, overwrite=True, progress=tick)
    con.say(f"2/5 converted to {data}")
    with _open_cluster(args, con) as client:
        report = run_segment(data.absolute(), segmenter, client, con, overwrite=True)
        con.say(f"3/5 segmented {', '.join(tasks)} in {report['chunk_count']} chunks "
                f"({'bundled U-Nets' if unet else 'classical ISG method'})")
        table_path = out / "isg.csv"
        table = run_stats(data, "isg", table_path, client, con, overwrite=True)
        con.say(f"4/5 wrote the ISG table {table_path}")
    _write_json(out / "run.json", report)
    truth = np.asarray(open_labels(gt, "isg"))
    pred = np.asarray(open_labels(data, "isg"))
    image = open_image(data).data
    z = int(np.argmax(np.count_nonzero(pred, axis=(1, 2))))
    layers: dict[str, Any] = {}
    scores: dict[str, float] = {}
    if unet:
        cell, cell_gt = np.asarray(open_labels(data, "cell")), np.asarray(open_labels(gt, "cell"))
        mito, mito_gt = np.asarray(open_labels(data, "mito")), np.asarray(open_labels(gt, "mito"))
        scores = {"cell_dice": _dice(cell_gt > 0, cell > 0),
                  "nucleus_dice": _dice(cell_gt == 2, cell == 2),
                  "mito_dice": _dice(mito_gt > 0, mito > 0)}
        layers = {"cell": cell[z], "mito": mito[z]}
    png = save_figure(np.asarray(image[z]), out / "demo.png", isg=pred[z],
                      title=f"sxtdask demo, slice {z}", **layers)
    con.say(f"5/5 saved {png}")
    m = match_instances(truth, pred)
    diam = table["equivalent_diameter_nm"]
    dice = "".join(f"; {k.replace('_', ' ')} {v:.3f}" for k, v in scores.items())
    text = (
        f"\nsxtdask demo: {len(table)} ISGs found ({m.tp + m.fn} in the ground truth); "
        f"F1@IoU0.5 {m.f1:.3f} (precision {m.precision:.3f}, recall {m.recall:.3f}){dice}; "
        f"median ISG diameter "
        f"{float(diam.median()) if len(diam) else float('nan'):.0f} nm; "
        f"{time.perf_counter() - t0:.0f} s in all.\nOutputs in {out}/: phantom.mrc, "
        f"phantom.gt.zarr, phantom.zarr (labels/{', labels/'.join(s.name for s in segmenter.outputs)}), "
        f"isg.csv, run.json, demo.png"
    )
    if unet:
        text += ("\nThe bundled U-Nets were trained on sxtdask's synthetic phantoms only; for real "
                 "tomograms train on your own labels (sxtdask train) or pass --model PATH.")
    con.say(text)
    return {"f1": m.f1, "n": len(table), "png": str(png), **scores}


COMMANDS: dict[str, Callable[[argparse.Namespace, Console], dict[str, Any]]] = {
    "convert": cmd_convert,
    "synth": cmd_synth,
    "segment": cmd_segment,
    "stats": cmd_stats,
    "demo": cmd_demo,
}


_JSON_LOG_HELP = ("no bars: one JSON object per line on stdout (event, stage, done/total, time, "
                  "message; the result as a final 'summary' line), for batch-system logs")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--json-log`` on the main parser, and ``-q/--quiet`` and ``--json-log`` on every command
    too, so that they work before or after the command word."""
    parser.add_argument("--json-log", action="store_true", help=_JSON_LOG_HELP)
    options = ((("-q", "--quiet"), "no progress bars or summaries"), (("--json-log",), _JSON_LOG_HELP))
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in {id(p): p for p in action.choices.values()}.values():
            group = sub.add_argument_group("output")
            for flags, text in options:
                free = [f for f in flags if f not in sub._option_string_actions]
                if free:  # SUPPRESS: an absent flag keeps the value given before the command
                    group.add_argument(*free, action="store_true", default=argparse.SUPPRESS,
                                       help=text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sxtdask`` console script.

    Exit status: 0, or 2 after a user error (one line on stderr), 130 when interrupted, or the
    ``exit_status`` a command puts in its result (e.g. 1 when some items of a batch failed).
    Called in a process that goes on (tests, notebooks), it leaves the ``sxtdask`` logger and the
    warning filters as it found them.
    """
    parser = build_parser()
    _add_output_options(parser)
    args = parser.parse_args(argv)
    log = logging.getLogger("sxtdask")
    saved = (log.handlers[:], log.level, log.propagate)
    try:
        with warnings.catch_warnings():
            return _run_command(args)
    finally:
        log.handlers[:], log.level, log.propagate = saved


def _run_command(args: argparse.Namespace) -> int:
    con = Console(args.quiet, json_log=args.json_log, command=args.command)
    _configure_logging(args.verbose, con)
    commands = dict(COMMANDS)
    commands.update({m.NAME: m.run for m in _command_modules()})
    try:
        result = commands[args.command](args, con) or {}
    except SxtdaskError as err:
        con.error(str(err))
        print(f"sxtdask: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        con.error("interrupted")
        print("sxtdask: interrupted", file=sys.stderr)
        return 130
    status = int(result.get("exit_status", 0) or 0)
    con.summary(result)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
