"""The README's Python snippets run as written (each as a script, in a fresh folder)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_snippets() -> list[str]:
    text = README.read_text()
    api = text[text.index("## Python API"): text.index("### Bundled default weights")]
    return re.findall(r"```python\n(.*?)```", api, flags=re.S)


def test_the_readme_has_python_snippets():
    assert len(_python_snippets()) >= 2


@pytest.mark.parametrize("index", range(len(_python_snippets())))
def test_readme_python_snippet_runs(index, tmp_path):
    script = tmp_path / f"snippet{index}.py"
    script.write_text(_python_snippets()[index])
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
