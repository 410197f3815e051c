"""The archive manifest: one row per tomogram, as ``manifest.json`` (read back on a rerun) and
``manifest.csv`` (the same rows, flat), both replaced atomically, and ``manifest.jsonl``, the
journal of the rows that changed since.

Recording a row appends one line to the journal (O(1)); the journal is folded into
``manifest.json``/``.csv`` (O(n)) only when it has grown as long as the manifest (at least
:data:`MIN_COMPACT` lines), at the start and the end of a run and after an interruption: O(1)
amortised per tomogram, where rewriting both files after every tomogram was O(n²) over a run.
Reading replays the journal over ``manifest.json``, the last line of an input winning; a line cut
short by a kill is ignored. A kill at any moment leaves the manifest readable and consistent: the
files are replaced atomically, the journal only grows, and a journal replayed over the
``manifest.json`` it was just folded into gives the same rows.
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

__all__ = ["MANIFEST_COLUMNS", "STAGES", "STATUSES", "ManifestLog", "read_manifest",
           "write_manifest"]

logger = logging.getLogger(__name__)

FORMAT = "sxtdask-archive-manifest"
VERSION = 1
JOURNAL = "manifest.jsonl"
#: Journal lines that always fit before a fold into ``manifest.json`` (small archives).
MIN_COMPACT = 64

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
    rows = _read_json(path) if path.is_file() else {}
    rows.update(_read_journal(Path(folder) / JOURNAL))
    return {k: {c: (math.nan if v is None and c in METRIC_COLUMNS else v) for c, v in r.items()}
            for k, r in rows.items()}


def _read_json(path: Path) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable archive manifest ({err}); "
                         "move it away to start afresh") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("rows"), list):
        raise InputError(f"{path}: not an sxtdask archive manifest; move it away to start afresh")
    return {row["input"]: row for row in doc["rows"]
            if isinstance(row, dict) and isinstance(row.get("input"), str)}


def _read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """The journal's rows by input, the last line of each input winning; a line that is not a
    row (cut short by a kill) is skipped with a warning.
    """
    rows: dict[str, dict[str, Any]] = {}
    try:
        f = path.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return rows
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                logger.warning("%s: line %d is not a manifest row (cut short?); skipped", path, n)
                continue
            if isinstance(row, dict) and isinstance(row.get("input"), str):
                rows[row["input"]] = row
    return rows


class ManifestLog:
    """The manifest of a running archive: :meth:`record` appends a row to the journal, which is
    folded into ``manifest.json``/``.csv`` when it is as long as the manifest (see the module
    docstring); :meth:`compact` folds it now.

    Parameters
    ----------
    folder : path
        The archive's output folder.
    rows : dict
        The run's rows by input (the caller's dict, read when folding).
    """

    def __init__(self, folder: str | os.PathLike[str], rows: dict[str, dict[str, Any]]) -> None:
        self.folder, self.rows = Path(folder), rows
        self.journal = self.folder / JOURNAL
        self.lines = 0
        self.folded = len(rows)

    def record(self, row: dict[str, Any]) -> None:
        """Append ``row`` (one line, flushed: a kill loses at most the line being written)."""
        line = json.dumps(_json_safe(row), allow_nan=False, default=_plain)
        with self.journal.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        self.lines += 1
        if self.lines >= max(MIN_COMPACT, self.folded):
            self.compact()

    def compact(self) -> Path:
        """Write every row into ``manifest.json``/``.csv``, then remove the journal (a run that
        ends leaves none); return the CSV.
        """
        csv = write_manifest(self.rows.values(), self.folder)
        self.journal.unlink(missing_ok=True)
        self.lines, self.folded = 0, len(self.rows)
        return csv
