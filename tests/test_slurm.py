"""``--cluster`` against a live single-node SLURM (``.ci/slurm-up`` starts one where it runs as root
with apt; elsewhere these tests skip): archives on SLURM worker jobs equal a LocalCluster's, a
worker job cancelled mid-run is replaced and the run finishes with the same labels, a driver
stopped as a walltime stops it (SIGTERM) leaves a store that a rerun resumes chunk by chunk, and
no job is left in the queue after any test.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from sxtdask.cli import main

pytestmark = pytest.mark.slurm

#: The job name of every test job: ``squeue -n`` finds them, and only them.
JOB_NAME = "sxtdask-ci"
#: Manifest and summary columns that differ between two runs of the same work.
_TIMING = ("seconds_", "started", "finished")
_CHUNKS = ("chunks_recomputed", "chunks_skipped", "status", "note")


def _slurm_state() -> str:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no sinfo/sbatch (run .ci/slurm-up as root)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo failed: {err}"
    states = out.stdout.split()
    if not any(s.rstrip("*") in ("idle", "mix", "alloc") for s in states):
        return f"no usable SLURM node (sinfo: {' '.join(states) or out.stderr.strip()})"
    try:  # a node that takes jobs but cannot run them would leave the runs waiting for workers
        probe = subprocess.run(["srun", "-t", "1", "-n", "1", "-J", JOB_NAME, "true"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        subprocess.run(["scancel", "-n", JOB_NAME], timeout=30, check=False)
        return f"srun true did not finish: {err}"
    if probe.returncode != 0:
        return f"srun true failed: {probe.stderr.strip()[:200]}"
    return ""


def _queued() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", JOB_NAME, "-o", "%i %T"], capture_output=True,
                         text=True, timeout=30)
    return [ln for ln in out.stdout.splitlines() if ln.strip()]


@pytest.fixture(scope="session")
def slurm_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dask-jobqueue YAML for the local SLURM: one core and 2 GiB per job, the scheduler on
    loopback.
    """
    why = _slurm_state()
    if why:
        pytest.skip(f"no live SLURM: {why}")
    pytest.importorskip("dask_jobqueue")
    root = tmp_path_factory.mktemp("slurm")
    path = root / "slurm.yaml"
    path.write_text(
        "jobqueue:\n"
        "  slurm:\n"
        f"    job-name: {JOB_NAME}\n"
        "    cores: 1\n"
        "    memory: 2GiB\n"
        "    processes: 1\n"
        "    walltime: '00:20:00'\n"
        "    queue: debug\n"
        "    interface: null\n"
        f"    local-directory: {root / 'scratch'}\n"
        "    job-script-prologue: ['export OMP_NUM_THREADS=1']\n"
        "    scheduler-options: {host: 127.0.0.1}\n")
    return path


@pytest.fixture(autouse=True)
def _queue_left_empty() -> Iterator[None]:
    """Every test leaves ``squeue`` empty of its jobs (checked, then cleaned for the next)."""
    yield
    if shutil.which("squeue") is None:
        return
    deadline = time.monotonic() + 30
    left = _queued()
    while left and time.monotonic() < deadline:  # scancel is asynchronous: give it time
        time.sleep(0.5)
        left = _queued()
    if left:
        subprocess.run(["scancel", "-n", JOB_NAME], timeout=30)
    assert not left, f"jobs left in the queue: {left}"


@pytest.fixture(scope="module")
def archive_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small phantom tomograms (their ground truth elsewhere)."""
    root = tmp_path_factory.mktemp("slurm-archive")
    inp = root / "in"
    inp.mkdir()
    for seed in (1, 2, 3):
        assert main(["-q", "synth", "--shape", "32,64,64", "--seed", str(seed),
                     str(inp / f"t{seed}.mrc")]) == 0
        shutil.move(str(inp / f"t{seed}.gt.zarr"), root / f"t{seed}.gt.zarr")
    return inp


def _sxtdask(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "sxtdask.cli", *args], capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"sxtdask {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done


# classical ISG instances: the work is real (statistics, segmentation, the global relabel,
# pyramids, measurement), with no network for each new worker job to load
_ARCHIVE = ("--task", "isg-instances", "--method", "classical", "--chunks", "16,64,64",
            "--in-flight", "1")


@pytest.fixture(scope="module")
def local_archive(archive_input: Path) -> Path:
    out = archive_input.parent / "out-local"
    assert main(["-q", "archive", str(archive_input), "--out", str(out), *_ARCHIVE,
                 "--workers", "2", "--dashboard-address", ":0"]) == 0
    return out


def _rows(path: Path, drop: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    key = "input" if rows and "input" in rows[0] else next(iter(rows[0]))
    return {r[key]: {k: v for k, v in r.items() if not k.startswith(_TIMING + drop)}
            for r in rows}


def _labels(out: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for store in sorted((out / "tomograms").glob("*.ome.zarr")):
        for name in sorted(p.name for p in (store / "labels").iterdir() if p.is_dir()):
            arrays[f"{store.name}/{name}"] = zarr.open_array(store / "labels" / name / "0",
                                                             mode="r")[...]
    return arrays


def _assert_same_archive(out: Path, ref: Path, *, chunk_columns: bool = True) -> None:
    drop = () if chunk_columns else _CHUNKS
    assert _rows(out / "manifest.csv", drop) == _rows(ref / "manifest.csv", drop)
    assert _rows(out / "summary.csv", drop) == _rows(ref / "summary.csv", drop)
    got, want = _labels(out), _labels(ref)
    assert sorted(got) == sorted(want) and len(want) == 3
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sxtdask.cli", "--json-log", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _events_until_done(proc: subprocess.Popen[str]) -> Iterator[dict[str, Any]]:
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            yield json.loads(line)
        except ValueError:
            continue


def _running_jobs(n: int, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [ln.split()[0] for ln in _queued() if ln.split()[1] == "RUNNING"]
        if len(running) >= n:
            return running
        time.sleep(0.3)
    raise AssertionError(f"{n} running job(s) expected; queue: {_queued()}")


def test_archive_on_slurm_equals_local(slurm_config: Path, archive_input: Path,
                                       local_archive: Path, tmp_path: Path) -> None:
    """SLURM worker jobs give byte-identical labels, manifest rows and summary (timings aside)
    to a LocalCluster with the same number of workers; the job logs go with a normal end.
    """
    out = tmp_path / "out"
    logs = set(Path(tempfile.gettempdir()).glob("sxtdask-slurm-jobs-*"))
    done = _sxtdask("archive", str(archive_input), "--out", str(out), *_ARCHIVE,
                    "--cluster", str(slurm_config), "--jobs", "2")
    assert "dashboard: http" in done.stdout
    assert "2 batch job(s) on" in done.stderr
    _assert_same_archive(out, local_archive)
    assert set(Path(tempfile.gettempdir()).glob("sxtdask-slurm-jobs-*")) == logs


def test_worker_job_cancelled_mid_run(slurm_config: Path, archive_input: Path,
                                      local_archive: Path, tmp_path: Path) -> None:
    """``scancel`` of a worker job once the first tomogram is converted (all segmentation still
    to do): the job is replaced, the run finishes, and its labels equal the LocalCluster's.
    """
    out = tmp_path / "out"
    proc = _start(["archive", str(archive_input), "--out", str(out), *_ARCHIVE,
                   "--cluster", str(slurm_config), "--jobs", "2"])
    cancelled = None
    try:
        for event in _events_until_done(proc):
            if cancelled is None and event.get("stage") == "conversions" and \
                    event.get("event") == "progress" and event.get("done", 0) >= 1:
                cancelled = _running_jobs(2)[0]
                subprocess.run(["scancel", cancelled], check=True, timeout=30)
        assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert cancelled is not None
    _assert_same_archive(out, local_archive, chunk_columns=False)


def test_driver_terminated_then_rerun_resumes(slurm_config: Path, archive_input: Path,
                                              local_archive: Path, tmp_path: Path) -> None:
    """A walltime's SIGTERM to the sxtdask process after the first tomogram: exit 143, every job
    cancelled, the finished tomogram kept; the rerun skips it, recomputes only the chunks that
    are missing, and ends with the LocalCluster's labels.
    """
    out = tmp_path / "out"
    proc = _start(["archive", str(archive_input), "--out", str(out), *_ARCHIVE,
                   "--cluster", str(slurm_config), "--jobs", "1"])
    try:
        for event in _events_until_done(proc):
            if event.get("status") == "done":
                proc.send_signal(signal.SIGTERM)
                break
        assert proc.wait(timeout=120) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "terminated (SIGTERM)" in (proc.stderr.read() if proc.stderr else "")
    first = _rows(out / "manifest.csv")
    assert sum(r["status"] == "done" for r in first.values()) >= 1
    rerun = _sxtdask("-q", "archive", str(archive_input), "--out", str(out), *_ARCHIVE,
                     "--cluster", str(slurm_config), "--jobs", "1")
    assert rerun.returncode == 0
    rows = _rows(out / "manifest.csv")
    for name, row in rows.items():
        if first.get(name, {}).get("status") == "done":
            assert row["status"] == "skipped", name
        else:
            assert row["status"] == "done", name
            total = int(row["chunks_total"])
            assert int(row["chunks_recomputed"]) + int(row["chunks_skipped"] or 0) == total
    _assert_same_archive(out, local_archive, chunk_columns=False)


def test_refused_jobs_say_why(slurm_config: Path, archive_input: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """A partition SLURM does not have: one line with sbatch's own words, exit 2, and nothing
    in the queue.
    """
    bad = tmp_path / "bad.yaml"
    bad.write_text(slurm_config.read_text().replace("queue: debug", "queue: nosuch"))
    assert main(["archive", str(archive_input), "--out", str(tmp_path / "out"), *_ARCHIVE,
                 "--cluster", str(bad), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("sxtdask: error:")]
    assert len(errors) == 1 and "invalid partition" in errors[0].lower(), err
    assert "Traceback" not in err
