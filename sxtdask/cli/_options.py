"""Options that several commands share, as ``argparse`` parent parsers, and the option types.

A command lists the parents it needs after its own options (``parents=[own, model_options(...),
cluster_options(), output_options()]``) so that its help shows its own options first, as before.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ._segmenters import METHOD_WORDS, TASKS

__all__ = ["JSON_LOG_HELP", "QUIET_HELP", "cluster_options", "model_options", "output_options"]

QUIET_HELP = "no progress bars or summaries"
JSON_LOG_HELP = ("no bars: one JSON object per line on stdout (event, stage, done/total, time, "
                 "message; the result as a final 'summary' line), for batch-system logs")


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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


# --------------------------------------------------------------------------- parent parsers


def model_options(chunks_help: str) -> argparse.ArgumentParser:
    """The options that choose and run the segmenters (``segment``, ``archive``); ``chunks_help``
    says what ``--chunks`` means for the command.
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--method", default=None, metavar="{" + ",".join(METHOD_WORDS) + "}",
                   help="method (default: unet, with the bundled weights unless --model is given)")
    p.add_argument("--model", action="append", default=None, metavar="[TASK=]PATH",
                   help="network checkpoint (a reference *_best.pth or sxtdask's own); with "
                        "several tasks, one TASK=PATH each")
    p.add_argument("--name", action="append", default=None, metavar="[TASK=]NAME",
                   help="write the task's labels as labels/NAME instead of its own name (cell, "
                        "mito, isg-mask, isg), so that methods sit side by side, e.g. --name "
                        "isg-classical; with several tasks, one TASK=NAME each")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where networks run (default: cuda when a GPU is visible)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="slices (U-Nets) or tiles (Mask R-CNN) per forward pass (default 8 slices, "
                        "4 tiles)")
    p.add_argument("--chunks", type=_triple, default=None, metavar="Z,Y,X", help=chunks_help)
    p.add_argument("--halo", type=_halo, default=None, metavar="Z,Y,X",
                   help="voxels read around each block (default: the method's)")
    return p


def cluster_options() -> argparse.ArgumentParser:
    """The ``workers`` options: a local cluster's size, or an existing scheduler; the dashboard
    and the performance report (read by ``_cluster.open_cluster``).
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("workers")
    g.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: cores, at most 4)")
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
