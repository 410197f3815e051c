"""``--cluster``'s configuration, everywhere (the live SLURM runs are tests/test_slurm.py): which
system a value names, the jobs' settings and their precedence, and the one-line errors for
options that do not go together, a missing dask-jobqueue, a missing batch system and a
configuration that is not dask-jobqueue's.
"""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import dask.config
import pytest

from sxtdask.cli import main
from sxtdask.engine import ClusterConfig
from sxtdask.engine._jobqueue import jobqueue_settings, jobqueue_system
from sxtdask.errors import ConfigError, InputError


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    return path


def test_system_names_and_files(tmp_path: Path) -> None:
    assert jobqueue_system("SLURM") == ("slurm", {})
    assert jobqueue_system("pbs") == ("pbs", {})
    path = _yaml(tmp_path, "jobqueue:\n  sge:\n    cores: 3\n    memory: 6GiB\n")
    assert jobqueue_system(str(path)) == ("sge", {"cores": 3, "memory": "6GiB"})


@pytest.mark.parametrize(("text", "words"), [
    ("cores: 2\n", "top-level 'jobqueue:'"),
    ("jobqueue:\n  slurm: {cores: 1}\n  pbs: {cores: 1}\n", "holds slurm, pbs"),
    ("jobqueue:\n  htcondor: {cores: 1}\n", "holds htcondor"),
    ("jobqueue:\n  slurm: [1, 2]\n", "must be a mapping"),
    ("jobqueue: [\n", "not a YAML file"),
])
def test_bad_files_say_why(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        jobqueue_system(str(_yaml(tmp_path, text)))


def test_unknown_name_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="local, slurm, pbs, sge, lsf"):
        jobqueue_system("kubernetes")
    with pytest.raises(InputError, match="no such cluster configuration"):
        jobqueue_system(str(tmp_path / "missing.yaml"))


def test_settings_defaults_and_precedence() -> None:
    """sxtdask's defaults only where the file and Dask's configuration are silent; the file wins
    over Dask's configuration; the dashboard address joins the scheduler's own options.
    """
    pytest.importorskip("dask_jobqueue")
    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None,
                          "jobqueue.slurm.log-directory": None,
                          "jobqueue.slurm.death-timeout": None,
                          "jobqueue.slurm.scheduler-options": {"host": "10.0.0.1"}}):
        got = jobqueue_settings("slurm", {}, threads=3, memory_limit="auto",
                                dashboard_address="127.0.0.1:9999")
        assert got["cores"] == 3 and got["memory"] == "12GiB" and got["processes"] == 1
        assert got["death_timeout"] == 60 and got["job_name"] == "sxtdask-worker"
        assert got["log_directory"] is None  # a temporary folder, made by jobqueue_cluster
        assert got["scheduler_options"] == {"host": "10.0.0.1",
                                            "dashboard_address": "127.0.0.1:9999"}
        sized = jobqueue_settings("slurm", {}, threads=2, memory_limit="6GiB",
                                  dashboard_address=":0")
        assert sized["memory"] == "6GiB"
    with dask.config.set({"jobqueue.pbs.cores": 8, "jobqueue.pbs.memory": "32GiB"}):
        got = jobqueue_settings("pbs", {"memory": "64GiB", "log-directory": "/logs",
                                        "scheduler-options": {"dashboard_address": ":1"}},
                                threads=1, memory_limit="auto", dashboard_address=":0")
        assert "cores" not in got  # Dask's configuration gives it
        assert got["memory"] == "64GiB" and got["log_directory"] == "/logs"
        assert got["scheduler_options"] == {"dashboard_address": ":1"}


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"cluster": "slurm", "scheduler": "tcp://127.0.0.1:8786"}, "leave out --scheduler"),
    ({"cluster": "slurm", "workers": 2}, "say --jobs N"),
    ({"jobs": 2}, "add --cluster"),
    ({"cluster": "local", "max_jobs": 2}, "add --cluster"),
])
def test_options_that_do_not_go_together(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        ClusterConfig(**kwargs)
    assert ClusterConfig(cluster="local").batch is None
    assert ClusterConfig(cluster="slurm").worker_memory_limit() is None


def _one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sxtdask: error: "), err
    return err[0]


def test_cli_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No cluster is started and nothing is written for options that cannot work."""
    pytest.importorskip("dask_jobqueue")
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "t.npy").write_bytes(b"")
    out = tmp_path / "out"
    base = ["archive", str(inp), "--out", str(out), "--task", "cell"]
    assert "--min-jobs" in _one_error(capsys, [*base, "--cluster", "slurm", "--jobs", "2",
                                               "--min-jobs", "1"])
    assert "say --jobs N" in _one_error(capsys, [*base, "--cluster", "pbs", "--workers", "2"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no qsub here
    assert "qsub not found" in _one_error(capsys, [*base, "--cluster", "pbs", "--jobs", "1"])
    real = builtins.__import__

    def no_jobqueue(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "dask_jobqueue" or name.startswith("dask_jobqueue."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jobqueue)
    monkeypatch.delitem(sys.modules, "dask_jobqueue", raising=False)
    assert "pip install 'sxtdask[cluster]'" in _one_error(
        capsys, [*base, "--cluster", "slurm", "--jobs", "1"])
    assert not (out / "manifest.csv").exists()
