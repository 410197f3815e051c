"""Lint and type checks kept in CI: ``ruff check`` and ``mypy`` with pyproject.toml's settings.

Each test skips when its tool is not installed (``pip install -e ".[test]"`` installs both) and
prints the tool's output when it finds something.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_module(module: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_ruff_check_passes():
    proc = _run_module("ruff", "check", "--no-cache", "sxtdask", "tests", "benchmarks")
    assert proc.returncode == 0, _report(proc)


def test_mypy_passes():
    # its own cache folder (ignored by git): a cold run takes a minute or two on two cores
    proc = _run_module("mypy", "sxtdask")
    assert proc.returncode == 0, _report(proc)
    assert "Success: no issues found" in proc.stdout, _report(proc)
