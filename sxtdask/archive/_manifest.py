"""The archive manifest: one row per tomogram, as ``manifest.json`` (read back on a rerun) and
``manifest.csv`` (the same rows, flat), both replaced atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from sxtdask._fs import atomic_file, write_atomic
from sxtdask.errors import InputError

from ._summary import METRIC_COLUMNS

__all__ = ["MANIFEST_COLUMNS", "STAGES", "STATUSES", "read_manifest", "write_manifest"]

logger = logging.getLogger(__name__)

FORMAT = "sxtdask-archive-manifest"
VERSION = 1

#: Stages of one tomogram, in order (``seconds_<stage>`` columns).
STAGES: tuple[str, ...] = ("checksum", "convert", "statistics", "segment", "pyramids", "measure")
#: ``done``: processed in this run; ``skipped``: complete from an earlier run and unchanged;
#: ``failed``: see ``error``; ``incomplete``: interrupted at ``stage`` (a rerun resumes it);
#: ``ignored``: a Zarr folder found that is not a tomogram (ground truth, labels only), see ``note``.
STATUSES: tuple[str, ...] = ("done", "skipped", "failed", "incomplete", "ignored")

MANIFEST_COLUMNS: tuple[str, ...] = (
    "input", "input_sha256", "input_bytes", "status", "stage", "error", "note", "output",
    "shape", "voxel_size_nm", "voxel_size_assumed",
    *(f"seconds_{s}" for s in STAGES), "seconds_total",
    "chunks_total", "chunks_recomputed", "chunks_skipped", "instance_counts",
    "started", "finished", "sxtdask_version", "tasks", "methods", "models", "model_sha256",
    *METRIC_COLUMNS,
)


def _flat(value: Any) -> Any:
    """A CSV cell: lists joined by ``x`` (shapes) or ``,``; dicts as ``key=value;...``."""
    if isinstance(value, dict):
        return ";".join(f"{k}={'' if v is None else v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """JSON for NumPy scalars and arrays, and paths."""
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    return str(value)


def write_manifest(rows: Iterable[dict[str, Any]], folder: str | os.PathLike[str]) -> Path:
    """Write ``manifest.json`` and ``manifest.csv`` (sorted by input) atomically; return the CSV.

    The JSON rows keep every field (lists, per-task dicts, and what a rerun needs: ``config``, the
    per-task configuration of the complete label images, and ``image_sha256``, the checksum of the
    input the converted image was made from); the CSV has the columns :data:`MANIFEST_COLUMNS`.
    """
    folder = Path(folder)
    rows = sorted(rows, key=lambda r: r["input"])
    doc = {"format": FORMAT, "version": VERSION, "rows": [_json_safe(r) for r in rows]}
    write_atomic(folder / "manifest.json", json.dumps(doc, indent=1, allow_nan=False, default=_plain) + "\n")
    flat = pd.DataFrame([{c: _flat(r.get(c)) for c in MANIFEST_COLUMNS} for r in rows],
                        columns=list(MANIFEST_COLUMNS))
    csv = folder / "manifest.csv"
    with atomic_file(csv) as tmp:
        flat.to_csv(tmp, index=False)
    return csv


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Rows of an earlier ``manifest.json`` in ``folder`` by input key (empty if there is none).

    Raises
    ------
    InputError
        The file exists but is not an sxtdask archive manifest.
    """
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable archive manifest ({err}); "
                         "move it away to start afresh") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("rows"), list):
        raise InputError(f"{path}: not an sxtdask archive manifest; move it away to start afresh")
    rows = {}
    for row in doc["rows"]:
        if isinstance(row, dict) and isinstance(row.get("input"), str):
            rows[row["input"]] = {k: (math.nan if v is None and k in METRIC_COLUMNS else v)
                                  for k, v in row.items()}
    return rows
