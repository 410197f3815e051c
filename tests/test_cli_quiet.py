"""The ``sxtdask`` command is quiet by default and silent with ``-q``: the real console script in
subprocesses, on a tiny synthetic cell.

- a taken dashboard port is one line on stderr (nothing with ``-q``), not distributed's warning;
- a normal run's stderr is empty, also when the workers are slow to close (a loaded machine):
  they are given time, not killed with a warning;
- Ctrl-C (SIGINT to the process, or to its whole group as a terminal sends it) prints only
  ``sxtdask: interrupted``, exit 130, and leaves no worker process behind;
- a reader that closes stdout (``| head -1``) ends the command without a traceback;
- ``--memory-limit`` is checked when the options are read, and a limit too small for any task
  is refused before a cluster starts, naming the smallest that works (which does).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from signals_helpers import sigint_default

psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
SCRIPT = Path(sys.executable).with_name("sxtdask")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "sxtdask.cli"]
CLUSTER = ("--workers", "1", "--dashboard-address", "127.0.0.1:0")
SEGMENT = ("segment", "x.zarr", "--task", "isg-instances", "--method", "classical", "--overwrite")

ENV = dict(os.environ)
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
# distributed's sampling profiler now and then prints a tornado traceback from a worker during a
# run ("'function' object has no attribute 'f_back'", dask/distributed#8163): not sxtdask's.
ENV["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "False"
ENV["COLUMNS"] = "200"
ENV.pop("PYTHONWARNINGS", None)


def sxtdask(*args: object, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *(str(a) for a in args)], capture_output=True, text=True,
                          cwd=cwd, env=env or ENV, timeout=timeout, check=False)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with x.mrc (16×32×32, synthetic) and x.zarr (two 8-slice chunks, labels/isg)."""
    d = tmp_path_factory.mktemp("quiet")
    for args in (("synth", "x.mrc", "--shape", "16,32,32", "--seed", "1"),
                 ("convert", "x.mrc", "x.zarr", "--chunks", "8,32,32"), (*SEGMENT, *CLUSTER)):
        proc = sxtdask("-q", *args, cwd=d)
        assert proc.returncode == 0, describe(proc)
    return d


@pytest.fixture
def held_port() -> tuple[socket.socket, int]:
    """A listening socket on 127.0.0.1 (a dashboard port someone else has)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock, sock.getsockname()[1]
    sock.close()


# --------------------------------------------------------------------------- dashboard port


@pytest.mark.parametrize("quiet", [False, True], ids=["default", "quiet"])
def test_a_taken_dashboard_port_is_one_line(tiny: Path, held_port, quiet: bool) -> None:
    _, port = held_port
    proc = sxtdask(*(["-q"] if quiet else []), *SEGMENT, "--workers", "1",
                   "--dashboard-address", f"127.0.0.1:{port}", cwd=tiny)
    assert proc.returncode == 0, describe(proc)
    if quiet:
        assert proc.stderr == "", describe(proc)
        return
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, describe(proc)
    assert re.fullmatch(rf"sxtdask: dashboard port {port} is taken; using 127\.0\.0\.1:(\d+)",
                        lines[0]), describe(proc)
    used = re.search(r":(\d+)$", lines[0]).group(1)
    assert f"dashboard: http://127.0.0.1:{used}/status" in proc.stdout, describe(proc)


# --------------------------------------------------------------------------- normal end


@pytest.mark.parametrize("quiet", [False, True], ids=["default", "quiet"])
def test_a_normal_run_says_nothing_on_stderr(tiny: Path, quiet: bool) -> None:
    proc = sxtdask(*(["-q"] if quiet else []), *SEGMENT, *CLUSTER, cwd=tiny)
    assert proc.returncode == 0 and proc.stderr == "", describe(proc)
    assert (proc.stdout == "") == quiet, describe(proc)


def test_workers_slow_to_close_are_given_time_not_killed(tiny: Path, tmp_path: Path) -> None:
    """A worker whose close takes 6 s (distributed's nanny kills after 4 s, with a warning)."""
    closed = tmp_path / "closed"
    closed.mkdir()
    env = {**ENV, "DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([str(HERE / "slow_close.py")]),
           "SXTDASK_TEST_CLOSE_DELAY": "6", "SXTDASK_TEST_CLOSED": str(closed)}
    proc = sxtdask("-q", *SEGMENT, *CLUSTER, cwd=tiny, env=env)
    assert proc.returncode == 0 and proc.stderr == "", describe(proc)
    assert len(list(closed.iterdir())) == 1, "the worker was killed before its close ended"


def test_shutdown_noise_is_dropped_only_while_closing_and_real_errors_show() -> None:
    from distributed.comm.core import CommClosedError

    from sxtdask.engine._shutdown import ShutdownNoise

    closing = [False]
    noise = ShutdownNoise(lambda: closing[0])

    def record(name: str, msg: str, error: BaseException | None = None) -> logging.LogRecord:
        info = (type(error), error, None) if error is not None else None
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, (), info)

    killing = record("distributed.nanny", "Worker process still alive after 4.0 seconds, killing")
    heartbeat = record("distributed.worker", "Failed to communicate with scheduler during heartbeat.",
                       CommClosedError("ConnectionPool closing."))
    failed = record("distributed.worker", "Compute Failed\nKey: segment-1\nException: "
                                          "'MemoryError()'")
    other = record("sxtdask.engine", "Stream is closed")  # not distributed's
    assert all(noise.filter(r) for r in (killing, heartbeat, failed, other))  # not closing
    closing[0] = True
    assert not noise.filter(killing) and not noise.filter(heartbeat)
    assert noise.filter(failed) and noise.filter(other)


# --------------------------------------------------------------------------- Ctrl-C


def _alive(procs: list[psutil.Process]) -> list[int]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize(("target", "quiet"), [("process", False), ("group", True)],
                         ids=["to-the-process", "to-the-group-quiet"])
def test_ctrl_c_is_one_line_exit_130_and_leaves_no_worker(tiny: Path, tmp_path: Path, target: str,
                                                           quiet: bool) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    env = {**ENV, "DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([str(HERE / "slow_blocks.py")]),
           "SXTDASK_TEST_BLOCK_DELAY": "3", "SXTDASK_TEST_CALLS": str(calls)}
    cmd = [*COMMAND, *(["-q"] if quiet else []), *SEGMENT, "--workers", "2",
           "--dashboard-address", "127.0.0.1:0"]
    proc = subprocess.Popen(cmd, cwd=tiny, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=sigint_default)
    try:
        t0 = time.monotonic()
        while not any(calls.iterdir()):  # the workers are busy segmenting
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < 120, "no block started within 120 s"
            time.sleep(0.05)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        deadline = time.monotonic() + 15
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _alive(children)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # strays, if the test failed
        except ProcessLookupError:
            pass
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert err == "sxtdask: interrupted\n", err
    assert not left, f"worker processes left behind: {left}"


# --------------------------------------------------------------------------- closed stdout


@pytest.mark.parametrize("args", [("--json-log", "synth", "y.mrc", "--shape", "16,32,32", "--overwrite"),
                                  ("--json-log", *SEGMENT, *CLUSTER),
                                  (*SEGMENT, *CLUSTER)],
                         ids=["json-synth", "json-segment", "bars-segment"])
def test_a_closed_stdout_ends_the_command_quietly(tiny: Path, args: tuple[str, ...]) -> None:
    """``sxtdask ... | head -1``: the first line is read, then the reader goes away."""
    proc = subprocess.Popen([*COMMAND, *args], cwd=tiny, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=240)
    assert first.strip(), err
    assert proc.returncode == 0, (proc.returncode, err)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


# --------------------------------------------------------------------------- --memory-limit


@pytest.mark.parametrize("value", ["auto", "4GiB", "500MB", "0.5", "4000000000", "0", "1.5e9"])
def test_memory_limit_values_dask_reads_are_accepted(value: str) -> None:
    from sxtdask.cli import build_parser

    args = build_parser().parse_args(["stats", "x.zarr", "--labels", "isg", "--out", "t.csv",
                                      "--memory-limit", value])
    assert args.memory_limit == value


@pytest.mark.parametrize("value", ["lots", "4XB", "-1", "1.5", "", "GiB"])
def test_a_bad_memory_limit_is_one_argparse_error(tmp_path: Path, value: str) -> None:
    proc = sxtdask("stats", "x.zarr", "--labels", "isg", "--out", "t.csv", "--memory-limit", value,
                   cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, describe(proc)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--memory-limit" in errors[0], describe(proc)


def _suggested(line: str) -> str:
    found = re.search(r"--memory-limit (\d+\.\d)GiB", line)
    assert found, line
    return f"{found.group(1)}GiB"


@pytest.mark.parametrize("command", ["stats", "segment"])
def test_a_memory_limit_too_small_is_refused_up_front_naming_what_works(tiny: Path, tmp_path: Path,
                                                                        command: str) -> None:
    args = (("stats", "x.zarr", "--labels", "isg", "--out", tmp_path / "t.csv") if command == "stats"
            else ("segment", "x.zarr", "--task", "isg-instances", "--method", "classical",
                  "--name", "isg-small"))
    t0 = time.monotonic()
    proc = sxtdask(*args, *CLUSTER, "--memory-limit", "1KiB", cwd=tiny, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, describe(proc)
    assert proc.stdout == "", "a cluster started"  # its dashboard line would be here
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sxtdask: error: "), describe(proc)
    assert "1.0 KiB" in lines[0] and time.monotonic() - t0 < 60, describe(proc)
    if command == "segment":
        assert "labels" not in os.listdir(tiny / "x.zarr") or "isg-small" not in os.listdir(
            tiny / "x.zarr" / "labels")
    # The smallest limit it names does work.
    ok = sxtdask("-q", *args, *CLUSTER, "--memory-limit", _suggested(lines[0]), "--overwrite",
                 cwd=tiny, timeout=240)
    assert ok.returncode == 0 and ok.stderr == "", describe(ok)
