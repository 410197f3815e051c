"""Every code block of the README runs as written.

- ``bash`` blocks run in README order, one after the other, in one fresh folder (the README is a
  walk-through: later blocks use what earlier ones made), with ``tests/data`` reachable at the same
  relative path as in a clone. The two set-up commands are checked rather than re-run: the test
  command must be exactly what ``.ci/run`` runs (which is how this test runs at all), and of the
  demo command everything after the install runs.
- ``python`` blocks run each as a script in its own fresh folder.
- ``text`` blocks are listings (what a script prints), not commands; no other kind is allowed.

A block fails its test when it exits non-zero, prints a traceback, or lets distributed's shutdown
noise through.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
INSTALL = re.compile(
    r"^python3 -m venv \.venv && \. \.venv/bin/activate && pip install -e (\S+)(?: && (.*))?$")
NOISE = ("Traceback", "Worker process still alive", "distributed.nanny", "CancelledError",
         "Stream is closed", "BrokenPipeError")


def _blocks() -> list[tuple[str, str, int]]:
    """(language, code, line) of every fenced block."""
    out = []
    text = README.read_text()
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        out.append((m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1))
    return out


BLOCKS = _blocks()
SHELL = [(code, line) for lang, code, line in BLOCKS if lang == "bash"]
PYTHON = [(code, line) for lang, code, line in BLOCKS if lang == "python"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONWARNINGS", None)
    return env


def _check(proc: subprocess.CompletedProcess, where: str) -> None:
    assert proc.returncode == 0, (f"{where} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                                  f"{proc.stderr[-3000:]}")
    noisy = [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, f"{where} printed:\n" + "\n".join(noisy[:20])


def test_every_block_is_bash_python_or_a_text_listing():
    kinds = {lang for lang, _, _ in BLOCKS}
    assert kinds <= {"bash", "python", "text"}, kinds
    assert len(SHELL) >= 6 and len(PYTHON) >= 2


def test_the_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    setup = [code.strip() for code, _ in SHELL if INSTALL.match(code.strip())]
    assert ci in setup, f".ci/run runs {ci!r}; the README's set-up commands are {setup}"


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> Path:
    """The folder the README's shell blocks run in, with tests/data where a clone has it."""
    root = tmp_path_factory.mktemp("readme")
    (root / "tests").mkdir()
    (root / "tests" / "data").symlink_to(REPO / "tests" / "data")
    return root


@pytest.mark.parametrize(("code", "line"), SHELL, ids=[f"line{line}" for _, line in SHELL])
def test_readme_shell_block_runs(code, line, walkthrough):
    script = code.strip()
    install = INSTALL.match(script)
    if install:
        rest = install.group(2)
        if rest is None or "pytest" in rest:  # the test command: CI runs it (see above)
            return
        script = rest  # the installation is this environment's; run what follows it
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=walkthrough,
                          capture_output=True, text=True, env=_env(), timeout=1200)
    _check(proc, f"README line {line}")


@pytest.mark.parametrize(("code", "line"), PYTHON, ids=[f"line{line}" for _, line in PYTHON])
def test_readme_python_block_runs(code, line, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, env=_env(), timeout=900)
    _check(proc, f"README line {line}")
