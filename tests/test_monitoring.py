"""Monitoring: the live dashboard, JSON logs, performance reports, quiet runs, progress bars.

The dashboard test opens the task stream of a running ``sxtdask segment`` in headless Chromium and
reads the task names out of the page's Bokeh data sources (the plot itself is a canvas). The other
tests read the ``--json-log`` lines, the ``--performance-report`` file and the console's events.
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from signals_helpers import sigint_default

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ)
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
ENV["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "False"  # see test_cli.py
ENV.pop("PYTHONWARNINGS", None)
SEGMENT = ("segment", "--task", "isg-instances", "--method", "classical", "--workers", "1",
           "--dashboard-address", "127.0.0.1:0")


def _store(folder: Path, name: str, shape: tuple[int, int, int], chunks: tuple[int, int, int],
           seed: int) -> Path:
    from sxtdask.io import open_volume, write_image
    from sxtdask.phantoms import write_phantom

    mrc, _ = write_phantom(folder / f"{name}.mrc", shape=shape, seed=seed)
    with open_volume(mrc) as vol:
        return write_image(vol, folder / f"{name}.zarr", chunks=chunks)


def sxtdask(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sxtdask.cli", *(str(a) for a in args)],
                          capture_output=True, text=True, cwd=cwd, env=ENV, timeout=240,
                          check=False)


def describe(proc: Any, stdout: str | None = None, stderr: str | None = None) -> str:
    out = proc.stdout if stdout is None else stdout
    err = proc.stderr if stderr is None else stderr
    return f"exit {proc.returncode}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"


def _events(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line is one JSON event with the common fields."""
    events = [json.loads(line) for line in stdout.splitlines()]
    for ev in events:
        assert {"event", "time", "elapsed", "command"} <= set(ev), ev
    return events


# --------------------------------------------------------------------------- the live dashboard

_BOKEH_NAMES = """
const names = new Set();
for (const doc of (window.Bokeh && window.Bokeh.documents) || []) {
  for (const model of doc._all_models.values()) {
    const data = model.data;
    if (!data) continue;
    const column = data instanceof Map ? data.get("name") : data["name"];
    if (column) for (const name of column) names.add(String(name));
  }
}
return Array.from(names);
"""


def _browser() -> Any:
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("headless Chromium needs the `chromium` and `chromedriver` commands "
                    "(Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def test_live_dashboard_task_stream_shows_the_segment_tasks(tmp_path: Path) -> None:
    import psutil

    # Many small chunks, one single-threaded worker: a run that lasts while the page is read.
    _store(tmp_path, "watchme", (48, 96, 96), (4, 32, 32), seed=5)
    browser = _browser()
    cmd = [sys.executable, "-m", "sxtdask.cli", *SEGMENT[:1], "watchme.zarr", *SEGMENT[1:],
           "--json-log"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=ENV, preexec_fn=sigint_default)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    names: list[str] = []
    try:
        url = _dashboard_url(proc, lines, seen)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/status"), url
        port = int(url.split(":")[2].split("/")[0])
        browser.get(url.removesuffix("status") + "individual-task-stream")
        live = False
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            names = browser.execute_script(_BOKEH_NAMES) or []
            if any("segment" in n and "watchme" in n for n in names):
                live = proc.poll() is None
                break
            time.sleep(0.5)
        assert live, f"no segment task of watchme in the task stream while the run was live: {names}"
        # The dashboard listens on the loopback interface only.
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert listening and all(a.ip == "127.0.0.1" for a in listening), listening
    finally:
        interrupted = proc.poll() is None  # on a loaded machine the run may end first
        if interrupted:
            proc.send_signal(signal.SIGINT)
        browser.quit()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == (130 if interrupted else 0), describe(proc, "", proc.stderr.read())
    while not lines.empty():
        seen.append(lines.get())
    events = _events("".join(seen))
    # The dashboard link comes first, before any stage starts; an interrupt ends the log.
    kinds = [e["event"] for e in events]
    assert kinds[0] == "message" and "dashboard" in events[0], events[:3]
    last = {"event": "error", "message": "interrupted"} if interrupted else {"event": "summary"}
    assert "start" in kinds and events[-1] == {**events[-1], **last}


def test_default_dashboard_listens_on_loopback_only() -> None:
    """Checked without a browser too: the default local cluster's dashboard is this machine's."""
    import psutil

    from sxtdask.engine import ClusterConfig, connect

    config = ClusterConfig(workers=1, memory_limit="1GiB")
    assert config.dashboard_address.startswith("127.0.0.1:")
    with connect(config) as client:
        url = client.dashboard_link
        port = int(url.split(":")[2].split("/")[0])
        listening = [c.laddr for c in psutil.Process().net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert url.startswith("http://127.0.0.1:"), url
    assert listening and all(a.ip == "127.0.0.1" for a in listening), listening


def _dashboard_url(proc: subprocess.Popen[str], lines: queue.Queue[str], seen: list[str]) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                pytest.fail(f"sxtdask exited ({proc.returncode}) before printing the dashboard")
            continue
        seen.append(line)
        event = json.loads(line)
        if "dashboard" in event:
            return str(event["dashboard"])
    pytest.fail("no dashboard link in 120 s")


# --------------------------------------------------------------------------- JSON log, reports, quiet


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _store(tmp_path_factory.mktemp("small"), "cell", (32, 64, 64), (8, 64, 64), seed=1)


@pytest.fixture(scope="module")
def json_run(small: Path) -> dict[str, Any]:
    """One ``segment --json-log --performance-report --report`` run, read by several tests."""
    folder = small.parent
    proc = sxtdask(*SEGMENT[:1], small.name, *SEGMENT[1:], "--json-log", "--performance-report",
                   "perf.html", "--report", "r.json", cwd=folder)
    assert proc.returncode == 0, describe(proc)
    return {"proc": proc, "folder": folder, "report": json.loads((folder / "r.json").read_text())}


def test_json_log_is_one_event_per_line_with_stages_and_a_summary(json_run: dict) -> None:
    proc, report = json_run["proc"], json_run["report"]
    events = _events(proc.stdout)
    assert {e["command"] for e in events} == {"segment"}
    assert [e["elapsed"] for e in events] == sorted(e["elapsed"] for e in events)
    # Every stage that starts ends once, successfully, and compute stages end with done == total.
    starts = [e["stage"] for e in events if e["event"] == "start"]
    ends = {e["stage"]: e for e in events if e["event"] == "end"}
    assert len(starts) >= 3 and sorted(starts) == sorted(ends), events
    assert all(e["ok"] for e in ends.values())
    counted = [e for e in ends.values() if e["total"] is not None]
    assert counted and all(e["done"] == e["total"] > 0 for e in counted), counted
    for e in events:
        if e["event"] == "progress":
            assert 0 <= e["done"] <= e["total"], e
    # The dashboard is said before the first stage; the result is the last line.
    first_start = next(i for i, e in enumerate(events) if e["event"] == "start")
    assert any("dashboard" in e for e in events[:first_start])
    summary = events[-1]
    assert summary["event"] == "summary" and summary["status"] == "ok"
    assert summary["instance_count"] == report["instance_count"]
    assert summary["chunk_count"] == report["chunk_count"] == 4
    assert not proc.stderr.strip(), proc.stderr  # bars and text stay out of the log


def test_performance_report_is_saved_with_the_task_names(json_run: dict) -> None:
    folder, report = json_run["folder"], json_run["report"]
    html = (folder / "perf.html").read_text()
    assert "Dask Performance Report" in html
    assert "segment.isg" in html  # the segment stage's tasks are in its task stream
    assert report["performance_report"] == "perf.html"
    assert not list(folder.glob(".perf.html*")), "a partial report was left behind"


@pytest.mark.parametrize(("argv", "quiet", "json_log"), [
    pytest.param(["segment", "d.zarr", "--task", "isg"], False, False, id="neither"),
    pytest.param(["-q", "segment", "d.zarr", "--task", "isg"], True, False, id="quiet-before"),
    pytest.param(["segment", "d.zarr", "--task", "isg", "--quiet"], True, False, id="quiet-after"),
    pytest.param(["--json-log", "stats", "d.zarr", "--labels", "isg", "--out", "t.csv"], False, True,
                 id="json-before"),
    pytest.param(["stats", "d.zarr", "--labels", "isg", "--out", "t.csv", "-q", "--json-log"],
                 True, True, id="both-after"),
    pytest.param(["convert", "a.mrc", "b.zarr", "--json-log"], False, True, id="json-convert"),
])
def test_quiet_and_json_log_before_or_after_the_command(argv: list[str], quiet: bool,
                                                        json_log: bool) -> None:
    from sxtdask.cli import _add_output_options, build_parser

    parser = build_parser()
    _add_output_options(parser)
    args = parser.parse_args(argv)
    assert (args.quiet, args.json_log) == (quiet, json_log)


def test_quiet_json_log_error_is_one_json_line_and_one_stderr_line(
    json_run: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Labels exist and --overwrite is missing: refused before any cluster starts."""
    import logging

    from sxtdask.cli import main

    monkeypatch.chdir(json_run["folder"])
    log = logging.getLogger("sxtdask")
    before = (log.handlers[:], log.level, log.propagate)
    status = main([*SEGMENT[:1], "cell.zarr", *SEGMENT[1:], "--quiet", "--json-log"])
    out, err = capsys.readouterr()
    assert status == 2, (out, err)
    # main() configured logging for the run only: later tests' caplog still sees sxtdask records.
    assert (log.handlers, log.level, log.propagate) == before
    (event,) = _events(out)
    assert event["event"] == "error" and "--overwrite" in event["message"]
    assert err.strip() == f"sxtdask: error: {event['message']}"


# --------------------------------------------------------------------------- console, in process


def test_json_console_throttles_progress_and_reports_failures() -> None:
    from sxtdask.cli import Console

    out = io.StringIO()
    con = Console(json_log=True, command="x", stream=out, progress_interval=3600)
    with con.steps("stage", 1000) as tick:
        for done in range(1, 1001):
            tick(done, 1000)
    with pytest.raises(RuntimeError), con.busy("spinner"):
        raise RuntimeError("boom")
    con.say("hello", dashboard="http://127.0.0.1:1/status")
    con.summary({"n": np.int64(3), "path": Path("a/b"), "shape": (1, 2)})
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    progress = [e["done"] for e in events if e["event"] == "progress"]
    # One event per tenth (the interval never passes), always the last one.
    assert progress == list(range(100, 1001, 100)), progress
    ends = [e for e in events if e["event"] == "end"]
    assert [(e["stage"], e["ok"]) for e in ends] == [("stage", True), ("spinner", False)]
    assert events[-2]["message"] == "hello" and events[-2]["dashboard"].endswith("/status")
    assert events[-1] == {**events[-1], "event": "summary", "n": 3, "path": "a/b", "shape": [1, 2]}


def test_quiet_console_says_nothing_but_the_json_summary() -> None:
    from sxtdask.cli import Console

    out = io.StringIO()
    con = Console(quiet=True, json_log=True, stream=out)
    with con.steps("stage", 2) as tick:
        tick(2, 2)
    con.say("hello")
    con.summary({"rows": 1})
    (event,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert event["event"] == "summary" and event["rows"] == 1


def test_nested_bars_share_one_display(capsys: pytest.CaptureFixture[str]) -> None:
    """An archive-level bar with per-stage bars and spinners inside join one display (rich < 14
    allows a single live display); finished inner bars are removed, the outer one stays.
    """
    from sxtdask.cli import Console

    con = Console()
    with con.steps("archive", 2) as outer:
        for i in range(2):
            with con.steps(f"stage {i}", 3) as inner:
                inner(3, 3)
            with con.busy("pyramids"):
                con.say(f"tomogram {i} [done]")
            outer(i + 1, 2)
    out = capsys.readouterr().out
    assert "tomogram 0 [done]" in out and "tomogram 1 [done]" in out  # not read as markup
    assert "archive" in out and "2/2" in out
    assert "stage 0" not in out and "pyramids" not in out, out
    assert con._live is None  # the display stopped with the last bar
