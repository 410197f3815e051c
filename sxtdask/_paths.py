"""Kept for the CLI until it is split: :func:`sxtdask._fs.check_new_path` is the one output check."""

from __future__ import annotations

from ._fs import check_new_path

__all__ = ["check_new_path"]
