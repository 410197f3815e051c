"""The archive manifest's journal: O(1) appends, folds into ``manifest.json``/``.csv`` only as often
as keeps the cost amortised O(1) per row, and a manifest that a kill at any moment leaves
readable and consistent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sxtdask.archive import read_manifest
from sxtdask.archive._manifest import JOURNAL, MIN_COMPACT, ManifestLog


def _row(i: int, status: str = "done") -> dict[str, Any]:
    return {"input": f"t{i:05d}.mrc", "status": status, "output": f"tomograms/t{i:05d}.ome.zarr",
            "chunks_total": 2, "isg_count": float(i)}


def test_folds_are_amortised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording n rows rewrites the manifest O(log n) times, so the rows written over a run
    stay within a small multiple of n (rewriting after every row writes n²/2).
    """
    from sxtdask.archive import _manifest

    written: list[int] = []
    real = _manifest.write_manifest

    def counting(rows: Any, folder: Any) -> Path:
        rows = list(rows)
        written.append(len(rows))
        return real(rows, folder)

    monkeypatch.setattr(_manifest, "write_manifest", counting)
    rows: dict[str, dict[str, Any]] = {}
    log = ManifestLog(tmp_path, rows)
    n = 1000
    for i in range(n):
        rows[_row(i)["input"]] = _row(i)
        log.record(_row(i))
    assert len(written) <= 6 and sum(written) <= 3 * n, written
    assert len(read_manifest(tmp_path)) == n  # json + journal together
    log.compact()
    assert not (tmp_path / JOURNAL).exists()
    table = pd.read_csv(tmp_path / "manifest.csv")
    assert len(table) == n and table["input"].is_monotonic_increasing


def test_a_kill_at_any_moment_leaves_a_consistent_manifest(tmp_path: Path) -> None:
    """A journal line cut short is skipped; a journal not yet emptied after a fold replays to the
    same rows; the last line of an input wins over manifest.json.
    """
    rows: dict[str, dict[str, Any]] = {}
    log = ManifestLog(tmp_path, rows)
    for i in range(3):
        rows[_row(i)["input"]] = _row(i, "incomplete")
        log.record(rows[_row(i)["input"]])
    journal = (tmp_path / JOURNAL).read_text()
    log.compact()
    (tmp_path / JOURNAL).write_text(journal)  # killed between the fold and the emptying
    assert read_manifest(tmp_path) == read_manifest(tmp_path)
    assert {k: r["status"] for k, r in read_manifest(tmp_path).items()} == \
        {_row(i)["input"]: "incomplete" for i in range(3)}
    done = json.dumps(_row(1, "done"))
    with (tmp_path / JOURNAL).open("a") as f:
        f.write(done + "\n" + done[: len(done) // 2])  # a line being written when killed
    got = read_manifest(tmp_path)
    assert got["t00001.mrc"]["status"] == "done"
    assert got["t00000.mrc"]["status"] == got["t00002.mrc"]["status"] == "incomplete"


def test_small_archives_fold_at_the_end(tmp_path: Path) -> None:
    rows: dict[str, dict[str, Any]] = {}
    log = ManifestLog(tmp_path, rows)
    for i in range(MIN_COMPACT - 1):
        rows[_row(i)["input"]] = _row(i)
        log.record(_row(i))
    assert not (tmp_path / "manifest.json").exists()
    assert len(read_manifest(tmp_path)) == MIN_COMPACT - 1
