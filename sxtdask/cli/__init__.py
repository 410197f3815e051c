"""The ``sxtdask`` command. The only package that prints, configures logging and draws progress
bars; library code reports through return values, log records, warnings and exceptions.

User errors (``SxtdaskError``) are printed as one line on stderr, without a traceback, and the
command exits with status 2.

One module per command (``COMMANDS``), each with ``NAME`` (the command word),
``add_parser(subparsers)`` (its ``argparse`` sub-parser, built from the shared option groups of
``_options``), ``EXAMPLES`` (its help's epilog: commands that work, each after a ``#`` line saying
what it does) and ``run(args, console) -> dict`` (the work; user errors raised as
``SxtdaskError``). Building the parser imports no NumPy, Dask or torch: ``--help`` is instant.
What commands share lives in ``_console`` (bars, JSON lines, logging),
``_options`` (option groups and types), ``_cluster`` (the Dask client) and ``_segmenters``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sxtdask import __version__
from sxtdask.errors import SxtdaskError

from . import (
    archive,
    convert,
    demo,
    evaluate,
    export_coco,
    interpolate,
    segment,
    stats,
    synth,
    train,
)
from ._console import Console, configure_logging, discard_stdout
from ._options import JSON_LOG_HELP, QUIET_HELP, HelpFormatter, _add_output_options

__all__ = ["COMMANDS", "Console", "build_parser", "main"]

logger = logging.getLogger("sxtdask.cli")

#: Errors of the disk, not of the program: a full disk or quota, a read-only file system.
_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

#: The command modules, in the order ``sxtdask --help`` lists them.
COMMANDS = (convert, synth, segment, stats, demo, archive, evaluate, export_coco, train, interpolate)

EXAMPLES = """\
examples:
  # the whole pipeline on a synthetic cell, in ./sxtdask-demo (a few minutes on a laptop):
  sxtdask demo
  # step by step: a synthetic cell, its OME-Zarr image, ISG instances, their table:
  sxtdask synth cell.mrc --shape 32,64,64
  sxtdask convert cell.mrc cell.zarr
  sxtdask segment cell.zarr --task isg-instances --method classical
  sxtdask stats cell.zarr --labels isg --out isg.csv

Each command's --help has its own examples.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``sxtdask`` parser: the main options and one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="sxtdask",
        description="Segment soft X-ray tomograms of whole cells at archive scale, on Dask.",
        epilog=EXAMPLES, formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sxtdask {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output: -v info, -vv debug")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    parser.add_argument("--json-log", action="store_true", help=JSON_LOG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (sxtdask COMMAND --help says more)")
    for module in COMMANDS:
        module.add_parser(sub)
        command = sub.choices[module.NAME]
        command.formatter_class = HelpFormatter
        command.epilog = module.EXAMPLES
    _add_output_options(parser)  # nothing left to add unless a command lacks output_options()
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sxtdask`` console script.

    Exit status: 0, or 2 after a user error (one line on stderr), 130 when interrupted, or the
    ``exit_status`` a command puts in its result (e.g. 1 when some items of a batch failed).
    A reader that closes stdout (``sxtdask ... | head -1``) ends the command quietly, status 0
    (what it finished stays; a rerun resumes the rest). Called in a process that goes on (tests,
    notebooks), it leaves the ``sxtdask`` logger and the warning filters as it found them.
    """
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:  # --help, --version or a usage error: their text out before exiting
            sys.stdout.flush()
            raise
        log = logging.getLogger("sxtdask")
        saved = (log.handlers[:], log.level, log.propagate)
        try:
            with warnings.catch_warnings(), _sigterm_interrupts():
                return _run_command(args)
        finally:
            log.handlers[:], log.level, log.propagate = saved
    except BrokenPipeError:
        discard_stdout()
        return 0
    except KeyboardInterrupt as err:  # before or after a command's own handling (imports, ...)
        print(f"sxtdask: {_interrupted(err)}", file=sys.stderr)
        return _interrupt_status(err)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's walltime or ``scancel``, ``kill``): ended as a Ctrl-C is, so
    that batch jobs are cancelled and what finished stays (a rerun resumes the rest).
    """


def _interrupted(err: BaseException) -> str:
    return "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"


def _interrupt_status(err: BaseException) -> int:
    return 143 if isinstance(err, Terminated) else 130


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread while a command runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _run_command(args: argparse.Namespace) -> int:
    con = Console(args.quiet, json_log=args.json_log, command=args.command)
    configure_logging(args.verbose, con)
    commands = {module.NAME: module.run for module in COMMANDS}
    try:
        result = commands[args.command](args, con) or {}
    except SxtdaskError as err:
        line = _one_line(err)
        con.error(line)
        print(f"sxtdask: error: {line}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in _DISK_ERRORS:
            raise  # a closed stdout (EPIPE) included: main() ends quietly
        line = (f"{err.filename + ': ' if err.filename else ''}cannot write: "
                f"{err.strerror or os.strerror(err.errno or 0)}; nothing complete-looking was left "
                "(free some space or choose another output, then run again: finished parts resume)")
        con.error(line)
        print(f"sxtdask: error: {line}", file=sys.stderr)
        return 2
    except Exception as err:
        if type(err).__name__ != "KilledWorker":  # distributed's (not imported by the CLI itself)
            raise
        line = _killed_worker(err)
        con.error(line)
        print(f"sxtdask: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        con.error(_interrupted(err))
        print(f"sxtdask: {_interrupted(err)}", file=sys.stderr)
        return _interrupt_status(err)
    status = int(result.get("exit_status", 0) or 0)
    con.summary(result)
    return status


def _killed_worker(err: BaseException) -> str:
    """One line for distributed's ``KilledWorker``: every worker that ran a task died."""
    from dask.utils import key_split

    task = getattr(err, "task", None)
    tries = getattr(err, "allowed_failures", None)
    name = key_split(task) if task is not None else "a task"
    return (f"the workers running {name} died {'' if tries is None else f'{tries + 1} times '}"
            "(most often out of memory): give them more memory (--memory-limit), fewer "
            "--threads-per-worker or smaller --chunks")


def _one_line(err: BaseException) -> str:
    """The error's message as one line (a message from a library may span several), options in
    the command line's words (``--overwrite``, not ``overwrite=True``).
    """
    text = err.for_cli() if isinstance(err, SxtdaskError) else str(err)
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or type(err).__name__
