"""Atomic writing of instance tables as CSV or Parquet."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from sxtdask._fs import atomic_file, check_new_path
from sxtdask.errors import ConfigError, OutputError

__all__ = ["write_table"]

logger = logging.getLogger(__name__)

_EXISTS = "{subject} exists; pass overwrite=True to replace it"


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False)


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    df.to_parquet(path, index=False)


_WRITERS: dict[str, Callable[[pd.DataFrame, Path], None]] = {
    ".csv": _write_csv,
    ".parquet": _write_parquet,
}


def _writer_for(path: Path) -> Callable[[pd.DataFrame, Path], None]:
    """Pick the writer from the suffix, or raise ConfigError naming the suffix."""
    writer = _WRITERS.get(path.suffix.lower())
    if writer is None:
        raise ConfigError(
            f"table {path}: suffix {path.suffix or '(none)'!r} is not supported; use .csv or .parquet"
        )
    return writer


def write_table(df: pd.DataFrame, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write an instance table atomically as CSV or Parquet, chosen by the suffix.

    The table goes to a temporary sibling file first and is moved over ``out``
    (:func:`sxtdask._fs.atomic_file`), so readers never see a half-written table; it gets the
    usual mode (``0666`` less the umask).

    Parameters
    ----------
    df : pandas.DataFrame
        The table, e.g. from :func:`regionprops_table`; its index is not written.
    out : str or Path
        Destination ending in ``.csv`` or ``.parquet`` (case-insensitive).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        ``out`` as a :class:`~pathlib.Path`.

    Raises
    ------
    ConfigError
        The suffix is neither ``.csv`` nor ``.parquet``.
    OutputError
        ``out`` exists without ``overwrite``, is a directory, or cannot be written.
    """
    path = Path(out)
    writer = _writer_for(path)
    check_new_path(path, overwrite, folder=False, what="table", exists=_EXISTS)
    try:
        with atomic_file(path) as tmp:
            writer(df, tmp)
    except OSError as exc:
        raise OutputError(f"cannot write table {path}: {exc.strerror or exc}") from exc
    logger.info("wrote %d instance row(s) to %s", len(df), path)
    return path

