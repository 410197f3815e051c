"""Resumable store runs: an interrupted run redoes only missing chunks, byte for byte the same.

Interruptions are real: a segmenter that raises part-way (the sync scheduler), a graph computed
only in part, and SIGINT to a ``sxtdask segment`` subprocess while its workers are busy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from dask.local import get_sync
from dask.utils import key_split
from scipy import ndimage
from signals_helpers import sigint_default

from sxtdask.engine import segment_store
from sxtdask.engine._resume import Progress
from sxtdask.engine._run import SCRATCH_DIR
from sxtdask.errors import OutputError
from sxtdask.io import labels_complete, list_labels, open_labels, write_image
from sxtdask.phantoms import make_phantom
from sxtdask.relabel import Match
from sxtdask.segmenters import ClassicalISG, OutputKind, OutputSpec, Segmenter, Task
from sxtdask.stats import global_stats

SHAPE = (32, 64, 64)
CHUNKS = (8, 32, 32)  # 4 × 2 × 2 = 16 blocks
N_BLOCKS = 16


class Interrupted(Exception):
    """Stands in for the run dying part-way."""


#: Segment calls made in this process, and after how many calls the next one dies (None: never).
CALLS: list[int] = []
DIE_AFTER: list[int | None] = [None]


@dataclasses.dataclass(frozen=True)
class Blobs(Segmenter):
    """A local segmenter with an instance output and a semantic one; counts its calls.

    How many calls it survives is kept outside its fields, so that the interrupted run and the
    rerun have the same plan.
    """

    level: float = 0.5
    halo: tuple[int, int, int] = (3, 3, 3)
    task = Task.ISG_INSTANCES
    outputs = (
        OutputSpec("blobs", OutputKind.INSTANCES, "uint32", Match.TOUCHING),
        OutputSpec("bright", OutputKind.SEMANTIC, "uint8"),
    )

    def segment_block(self, block, stats, voxel_size_nm):
        if DIE_AFTER[0] is not None and len(CALLS) >= DIE_AFTER[0]:
            raise Interrupted("the run died here")
        CALLS.append(block.size)
        smooth = ndimage.gaussian_filter(stats.normalize(block), 1.0, truncate=2.0, mode="nearest")
        mask = smooth > self.level
        return {"blobs": ndimage.label(mask)[0], "bright": (smooth > 0.3).astype(np.uint8)}


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, seed=3)


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()
    DIE_AFTER[0] = None
    yield
    CALLS.clear()
    DIE_AFTER[0] = None


def _store(phantom, path: Path) -> Path:
    return write_image(phantom.image, path, chunks=CHUNKS, voxel_size_nm=(30.0, 30.0, 30.0))


def _plan(path: Path, seg: Segmenter, **kw):
    stats = global_stats(da.from_zarr(str(path / "0"))).compute(scheduler="sync")
    return segment_store(path, seg, stats, **kw)


def _complete(path: Path, seg: Segmenter, **kw):
    run = _plan(path, seg, **kw)
    counts = run.graph.compute(scheduler="sync")
    run.finish()
    return run, counts


def _interrupt(path: Path, seg: Segmenter, after: int, **kw) -> None:
    """Run until ``after`` blocks are segmented; the next one dies."""
    CALLS.clear()
    DIE_AFTER[0] = after
    try:
        with pytest.raises(Interrupted):
            _complete(path, seg, **kw)
    finally:
        DIE_AFTER[0] = None
        CALLS.clear()


def _label_files(path: Path) -> dict[str, bytes]:
    """Every file of every label image (all levels, chunks and metadata), by relative path."""
    root = path / "labels"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(phantom, tmp_path_factory):
    """An uninterrupted run: its counts and label files."""
    path = _store(phantom, tmp_path_factory.mktemp("ref") / "ref.zarr")
    _, counts = _complete(path, Blobs())
    files = _label_files(path)
    assert counts["blobs"] > 5 and any(k.startswith("bright/0/") for k in files)
    return counts, files


def test_rerun_after_a_crash_recomputes_only_missing_blocks(phantom, reference, tmp_path):
    path = _store(phantom, tmp_path / "a.zarr")
    _interrupt(path, Blobs(), 6)
    assert "blobs" not in list_labels(path) and not labels_complete(path, "bright")
    done = len(Progress(path / SCRATCH_DIR).segmented(_plan(path, Blobs()).grid))
    assert done == 6  # the sync scheduler ran blocks one by one: six finished, the 7th died
    run, counts = _complete(path, Blobs())
    assert (run.chunks_total, run.chunks_reused, run.chunks_computed) == (N_BLOCKS, 6, N_BLOCKS - 6)
    assert len(CALLS) == N_BLOCKS - 6  # the recorded blocks were not segmented again
    assert counts == reference[0]
    assert _label_files(path) == reference[1]  # same chunk files, byte for byte
    assert not (path / SCRATCH_DIR).exists()


def test_rerun_after_the_relabel_stage_was_cut_skips_written_chunks(phantom, reference, tmp_path):
    path = _store(phantom, tmp_path / "b.zarr")
    run = _plan(path, Blobs())
    graph = dict(run.graph.dask)
    writes = sorted(k for k in graph if isinstance(k, tuple) and key_split(k).endswith("-write"))
    assert len(writes) == N_BLOCKS
    get_sync(graph, writes[:5])  # everything the first five final chunks need, and no more
    CALLS.clear()
    rerun, counts = _complete(path, Blobs())
    assert rerun.chunks_reused == N_BLOCKS and CALLS == []
    assert rerun.relabel_reused == {"blobs": 5}
    assert counts == reference[0] and _label_files(path) == reference[1]


def test_a_changed_plan_or_overwrite_discards_progress(phantom, tmp_path, caplog):
    path = _store(phantom, tmp_path / "c.zarr")
    _interrupt(path, Blobs(), 5)
    with caplog.at_level(logging.WARNING, logger="sxtdask.engine"):
        run = _plan(path, Blobs(level=0.6))
        assert run.chunks_reused == 0
        # Planning changes nothing on disk: the old records go when the graph runs.
        assert len(Progress(path / SCRATCH_DIR).segmented(run.grid)) == 5
        assert "plan changed" not in caplog.text
        counts = run.graph.compute(scheduler="sync")
        assert "plan changed" in caplog.text
        assert len(Progress(path / SCRATCH_DIR).segmented(run.grid)) == N_BLOCKS
        run.finish()
    assert len(CALLS) == N_BLOCKS
    fresh = _store(phantom, tmp_path / "fresh.zarr")
    _, fresh_counts = _complete(fresh, Blobs(level=0.6))
    assert counts == fresh_counts and _label_files(path) == _label_files(fresh)

    # An interrupted --overwrite leaves the complete labels in place (a plain rerun is refused)
    # and resumes its replacement when the plan is the same; another plan starts it afresh.
    before = _label_files(path)
    _interrupt(path, Blobs(), 3, overwrite=True)
    assert {k: v for k, v in _label_files(path).items() if ".sxtdask-new" not in k} == before
    with pytest.raises(OutputError, match="exists; pass overwrite=True"):
        _plan(path, Blobs())
    assert _plan(path, Blobs(), overwrite=True).chunks_reused == 3
    assert _plan(path, Blobs(level=0.7), overwrite=True).chunks_reused == 0


def test_task_keys_name_the_stage_the_outputs_and_the_tomogram(phantom, tmp_path):
    path = _store(phantom, tmp_path / "Tomo 07-b.ome.zarr")
    names = {key_split(k) for k in _plan(path, Blobs()).graph.dask}
    tomo = "Tomo_07_b"
    assert f"segment.blobs+bright.{tomo}" in names
    assert {f"relabel.blobs.{tomo}-write", f"relabel.blobs.{tomo}-resolve"} <= names
    assert all(tomo in n for n in names), names
    assert names == {key_split(k) for k in _plan(path, Blobs()).graph.dask}  # stable
    _interrupt(path, Blobs(), 4)
    reused = [k for k in _plan(path, Blobs()).graph.dask
              if key_split(k) == f"segment.blobs+bright.{tomo}-reused"]
    assert len(reused) == 4


# --------------------------------------------------------------------------- SIGINT, for real

HELPER = Path(__file__).with_name("slow_blocks.py")


def _cli(data: Path, report: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "sxtdask.cli", "-q", "segment", str(data), "--task",
           "isg-instances", "--method", "classical", "--chunks", "8,32,32", "--report", str(report),
           "--workers", "1", "--threads-per-worker", "2", "--dashboard-address", "127.0.0.1:0"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=sigint_default)


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the subprocess's own group: stray workers
        except ProcessLookupError:
            pass
    return proc.returncode, err


def test_sigint_to_the_cli_then_rerun_recomputes_only_missing_chunks(phantom, tmp_path):
    data, ref = _store(phantom, tmp_path / "s.zarr"), _store(phantom, tmp_path / "r.zarr")
    _complete(ref, ClassicalISG(), chunks=(8, 32, 32))
    calls = tmp_path / "calls"
    calls.mkdir()
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([str(HELPER)]),
           "SXTDASK_TEST_BLOCK_DELAY": "1.0", "SXTDASK_TEST_CALLS": str(calls)}
    records = data / SCRATCH_DIR / "done" / "segment"
    proc = _cli(data, tmp_path / "first.json", env)
    t0 = time.monotonic()
    while not (records.is_dir() and len(list(records.glob("*.npz"))) >= 2):
        assert proc.poll() is None, _finish(proc, 5)
        assert time.monotonic() - t0 < 120, "no block finished within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    rc, err = _finish(proc, 60)
    assert rc == 130 and "interrupted" in err, err
    assert not (tmp_path / "first.json").exists() and "isg" not in list_labels(data)
    done = len(list(records.glob("*.npz")))
    assert 2 <= done < N_BLOCKS

    for p in calls.iterdir():
        p.unlink()
    proc = _cli(data, tmp_path / "second.json", {**env, "SXTDASK_TEST_BLOCK_DELAY": "0"})
    rc, err = _finish(proc, 180)
    assert rc == 0, err
    report = json.loads((tmp_path / "second.json").read_text())
    assert report["chunks_total"] == N_BLOCKS
    assert (report["chunks_skipped"], report["chunks_recomputed"]) == (done, N_BLOCKS - done)
    assert sum(1 for _ in calls.iterdir()) == N_BLOCKS - done  # segmented on the workers
    np.testing.assert_array_equal(open_labels(data, "isg").compute(),
                                  open_labels(ref, "isg").compute())
    assert _label_files(data) == _label_files(ref)
