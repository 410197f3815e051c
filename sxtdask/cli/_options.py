"""Options that several commands share, as ``argparse`` parent parsers, and the option types.

A command lists the parents it needs after its own options (``parents=[own, model_options(...),
cluster_options(), output_options()]``) so that its help shows its own options first, as before.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ._segmenters import METHOD_WORDS, TASKS

__all__ = ["CHUNKS_HELP", "JSON_LOG_HELP", "QUIET_HELP", "HelpFormatter", "add_chunks_option",
           "add_task_option", "cluster_options", "model_options", "output_options"]

QUIET_HELP = "no progress bars, summaries or notices (warnings and errors still show)"
JSON_LOG_HELP = ("no bars: one JSON object per line on stdout (event, stage, done/total, time, "
                 "message; the result as a final 'summary' line), for batch-system logs")
#: What ``--chunks`` means, in every command that has it.
CHUNKS_HELP = ("the chunks Dask works in: an image that the command writes is stored in chunks of "
               "this shape, an existing image is processed in blocks of this shape (default: the "
               "image's own chunks, or 32 full slices for a new image)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help with the examples of an epilog kept as written, and every default said the same
    way, ``(default: VALUE)``: added to an argument's help unless it says one itself (flags have
    none; where the default is None the help says in words what happens).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (action.nargs == 0 or default is None or default is False
                or default is argparse.SUPPRESS or default in ("", [], ()) or "(default" in text):
            return text
        return f"{text} (default: {default_text(default).replace('%', '%%')})"


def default_text(value: object) -> str:
    """A default as it is typed: ``128,256,256`` for a shape, ``sxtdask-demo`` for a path."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


# --------------------------------------------------------------------------- option types


def _triple(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three integers Z,Y,X") from None
    if len(values) != 3 or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must be three positive integers Z,Y,X")
    return values


def _halo(text: str) -> tuple[int, int, int]:
    """``Z,Y,X`` voxels of halo: non-negative (0 where a method needs none, e.g. ``12,0,0``)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three integers Z,Y,X") from None
    if len(values) != 3 or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must be three non-negative integers Z,Y,X")
    return values


def _tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks or len(set(tasks)) != len(tasks):
        raise argparse.ArgumentTypeError(
            f"{text!r}: tasks must be distinct values of {', '.join(TASKS)}")
    return tasks


def _voxel_size(text: str) -> tuple[float, float, float]:
    """``Z,Y,X`` nanometres, or one number for isotropic voxels (``30`` = ``30,30,30``)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a voxel size in nm (Z,Y,X or one number)") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must be one or three positive numbers of nm (Z,Y,X)")
    return values[0], values[1], values[2]


def _memory_limit(text: str) -> str:
    """A worker's memory limit as Dask reads it: ``auto``, bytes with a unit (``4GiB``,
    ``500MB``) or without (``4000000000``), a fraction of this machine's memory (``0.5``), or
    ``0`` (no limit). Checked when the options are read; returned as given.
    """
    word = text.strip()
    if word.lower() == "auto":
        return "auto"
    bad = argparse.ArgumentTypeError(
        f"{text!r} is not a memory size: say e.g. 4GiB, 500MB, 0.5 (of this machine's memory), "
        "0 (no limit) or auto")
    if not word[:1].isdigit() and not word.startswith("."):  # "", "GiB" (Dask reads 1 GiB), "-1"
        raise bad
    try:
        number = float(word)
    except ValueError:
        from dask.utils import parse_bytes  # only when a unit is given: Dask's own units

        try:
            if parse_bytes(word) <= 0:
                raise bad
        except (ValueError, TypeError):
            raise bad from None
        return word
    if not math.isfinite(number) or number < 0 or (number > 1 and number != int(number)):
        raise bad
    return word


def _fraction(text: str) -> float:
    """A threshold from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must lie between 0 and 1")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


# --------------------------------------------------------------------------- parent parsers


def add_task_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--task`` (or ``--tasks``): one task or several, comma-separated, e.g. ``cell,isg``."""
    p.add_argument("--task", "--tasks", dest="task", required=True, type=_tasks,
                   metavar="TASK[,TASK...]", help=f"{help}; tasks: {', '.join(TASKS)}")


def add_chunks_option(p: argparse.ArgumentParser) -> None:
    """``--chunks Z,Y,X`` (:data:`CHUNKS_HELP`), the same in every command that has it."""
    p.add_argument("--chunks", type=_triple, default=None, metavar="Z,Y,X", help=CHUNKS_HELP)


def model_options() -> argparse.ArgumentParser:
    """The options that choose and run the segmenters (``segment``, ``archive``)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--method", default=None, metavar="{" + ",".join(METHOD_WORDS) + "}",
                   help="method (default: unet, with the bundled weights unless --model is given)")
    p.add_argument("--model", action="append", default=None, metavar="[TASK=]PATH",
                   help="network checkpoint (a reference *_best.pth or sxtdask's own; for "
                        "--method unet3d a Biomedisa .h5 file such as ACSeg.h5, which it "
                        "requires); with several tasks, one TASK=PATH each")
    p.add_argument("--name", action="append", default=None, metavar="[TASK=]NAME",
                   help="write the task's labels as labels/NAME instead of its own name (cell, "
                        "mito, isg-mask, isg), so that methods sit side by side, e.g. --name "
                        "isg-classical; with several tasks, one TASK=NAME each")
    add_device_option(p)
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="slices (2-D U-Nets), tiles (Mask R-CNN, cascade) or 64³ patches "
                        "(unet3d) per forward pass (default: 8 slices, 4 Mask R-CNN tiles, 8 "
                        "cascade tiles, 4 patches, fewer where a worker's memory needs it)")
    add_chunks_option(p)
    p.add_argument("--halo", type=_halo, default=None, metavar="Z,Y,X",
                   help="voxels read around each block (default: the method's)")
    p.add_argument("--clean", type=_fraction, default=None, metavar="T",
                   help="--task cell: drop the small connected parts of the cell; keep the "
                        "6-connected parts larger than T x the largest (0.1: debris and "
                        "fragments go, several cells stay; 0.9: the largest only). unet3d: "
                        "Biomedisa's clean, per label on its grid; unet and cascade: the whole "
                        "cell (labels > 0) at full resolution, chunk by chunk (default: off)")
    p.add_argument("--fill", type=_fraction, default=None, metavar="T",
                   help="--method unet3d only: Biomedisa's fill, per label fill the enclosed "
                        "holes up to T x the label's size (Biomedisa: 0.9; default: off)")
    return p


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda``: where networks run."""
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where networks run: auto is cuda when a GPU is visible, else cpu")


def cluster_options() -> argparse.ArgumentParser:
    """The ``workers`` options: a local cluster's size, or an existing scheduler; the dashboard
    and the performance report (read by ``_cluster.open_cluster``).
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("workers")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes (default: cores, at most 4)")
    g.add_argument("--threads-per-worker", type=int, default=1, metavar="N",
                   help="threads per local worker")
    g.add_argument("--memory-limit", type=_memory_limit, default="auto", metavar="SIZE",
                   help="memory per local worker: 4GiB, 500MB, 0.5 (of this machine's memory), 0 "
                        "(no limit) or auto (this machine's memory shared by the workers' "
                        "threads); a limit too small for the work is refused before it starts")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="use an existing Dask scheduler (tcp://HOST:8786, or tls://HOST:8786 with "
                        "the --tls-* files) instead of a local cluster")
    g.add_argument("--cluster", default="local", metavar="local|slurm|pbs|sge|lsf|CONFIG.yaml",
                   help="where workers come from: local (this machine), or batch jobs that "
                        "sxtdask submits, scales and cancels at the end (dask-jobqueue; the "
                        "jobs' settings from CONFIG.yaml as in cluster/slurm.yaml, or from your "
                        "Dask jobqueue configuration)")
    g.add_argument("--jobs", type=_positive, default=None, metavar="N",
                   help="--cluster: a fixed number of jobs (default: adaptive, see --min-jobs)")
    g.add_argument("--min-jobs", type=int, default=None, metavar="N",
                   help="--cluster: adaptive scaling's fewest jobs (default 1)")
    g.add_argument("--max-jobs", type=_positive, default=None, metavar="N",
                   help="--cluster: adaptive scaling's most jobs (default 4)")
    g.add_argument("--dashboard-address", default="127.0.0.1:8787", metavar="HOST:PORT",
                   help="local dashboard address, this machine only (a busy port picks "
                        "another, said in one line; 0.0.0.0:8787 opens it to the network)")
    g.add_argument("--tls-ca-file", default=None, metavar="PEM",
                   help="tls:// scheduler: the CA certificate that signed the cluster's certificates")
    g.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="tls:// scheduler: this client's certificate")
    g.add_argument("--tls-key", default=None, metavar="PEM",
                   help="tls:// scheduler: this client's private key (default: in --tls-cert)")
    g.add_argument("--performance-report", type=Path, default=None, metavar="FILE.html",
                   help="save distributed's performance report of the run (task stream, worker "
                        "profiles, bandwidth) as one HTML file")
    return p


_OUTPUT_FLAGS = ((("-q", "--quiet"), QUIET_HELP), (("--json-log",), JSON_LOG_HELP))


def output_options() -> argparse.ArgumentParser:
    """``-q/--quiet`` and ``--json-log`` on a command, so that they work after the command word as
    well as before it (on the main parser).
    """
    p = argparse.ArgumentParser(add_help=False)
    _add_output_group(p)
    return p


def _add_output_group(p: argparse.ArgumentParser) -> None:
    free: list[tuple[list[str], str]] = []
    for flags, text in _OUTPUT_FLAGS:
        names = [flag for flag in flags if flag not in p._option_string_actions]
        if names:
            free.append((names, text))
    if not free:
        return
    group = p.add_argument_group("output")
    for names, text in free:  # SUPPRESS: an absent flag keeps the value given before the command
        group.add_argument(*names, action="store_true", default=argparse.SUPPRESS, help=text)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--json-log`` on the main parser, and ``-q/--quiet`` and ``--json-log`` on every command
    too, so that they work before or after the command word. Adds only what is missing
    (:func:`sxtdask.cli.build_parser` already gives every command :func:`output_options`).
    """
    if "--json-log" not in parser._option_string_actions:
        parser.add_argument("--json-log", action="store_true", help=JSON_LOG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                _add_output_group(sub)
