"""Checks on an output path before anything is written (shared by the CLI and library writers)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OutputError

__all__ = ["check_new_path"]


def check_new_path(path: Path, overwrite: bool) -> None:
    """Raise :class:`OutputError` unless ``path`` may be written: absent (or ``overwrite``), in an
    existing, writable folder."""
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: the folder {parent} is not writable")
