"""The package's architecture, checked on its import graph (grimp, import-linter's engine).

- no import cycle between sxtdask's modules (function-level imports included);
- the layers contract of ``[tool.importlinter]`` in pyproject.toml is kept;
- no module imports another package's private modules (``sxtdask.X._y`` from outside
  ``sxtdask.X``); the bottom-layer helpers ``sxtdask._fs`` and ``sxtdask._tree`` are for
  everyone (the root's other private modules, ``_version`` and the
  leaf ``_demo``, belong to ``sxtdask`` itself, so the rule lets its modules import them too;
  the layers contract says which may);
- every package's ``__init__`` declares ``__all__`` and every name in it exists.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sxtdask"
#: Private top-level modules every layer may import (the bottom layer).
SHARED_PRIVATE = {"sxtdask._fs", "sxtdask._tree"}


def _strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted, in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(edges.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(edges.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components)


def _shortest_cycle(start: str, members: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest import cycle through ``start`` inside one component: ``[start, ..., start]``."""
    parents: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(edges.get(node, ())):
                if nxt not in members:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt not in seen:
                    seen.add(nxt)
                    parents[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"{start} is on no cycle")  # pragma: no cover


@dataclass(frozen=True)
class ImportCycle:
    """One strongly connected group of modules: a shortest cycle through it, and all its members."""

    path: list[str]  # [a, b, ..., a]
    group: list[str]  # sorted; more than the path's modules when several cycles overlap

    def __str__(self) -> str:
        text = " -> ".join(self.path)
        rest = [m for m in self.group if m not in self.path]
        if rest:
            text += f"\n    (its group of {len(self.group)} mutually importing modules also holds: "
            text += ", ".join(rest) + ")"
        return text


def find_import_cycles(package: str) -> list[ImportCycle]:
    """Every group of ``package``'s modules that import each other in a circle.

    One entry per strongly connected component of the module import graph (grimp counts every
    ``import`` statement, function-level ones included), with a shortest cycle through the
    component's first module. Empty when the graph has no cycle.
    """
    graph = grimp.build_graph(package, include_external_packages=False, cache_dir=None)
    nodes = set(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & nodes for m in nodes}
    cycles = []
    for component in _strongly_connected(nodes, edges):
        if len(component) == 1 and component[0] not in edges[component[0]]:
            continue
        cycles.append(ImportCycle(_shortest_cycle(component[0], set(component), edges), component))
    return cycles


def _describe(cycles: list[ImportCycle]) -> str:
    return "\n".join(str(cycle) for cycle in cycles)


def _drop_modules(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def check_no_import_cycles(package: str) -> None:
    """Fail, naming each cycle's modules, if ``package`` has any import cycle."""
    cycles = find_import_cycles(package)
    if cycles:
        raise AssertionError(f"{len(cycles)} import cycle(s) in {package}:\n{_describe(cycles)}")


def test_no_import_cycles():
    check_no_import_cycles(PACKAGE)


def test_cycle_finder_reports_a_cycle(tmp_path, monkeypatch):
    """The finder is not vacuous: a two-module cycle in a throwaway package is reported."""
    pkg = tmp_path / "cyclepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyclepkg import b\n")
    (pkg / "b.py").write_text(textwrap.dedent("""
        def f():
            from cyclepkg import a  # a function-level import closes the circle
            return a
    """))
    (pkg / "c.py").write_text("import cyclepkg.a\n")  # imports into the cycle, is not on it
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        cycles = find_import_cycles("cyclepkg")
        with pytest.raises(AssertionError, match=r"1 import cycle\(s\) in cyclepkg:\n"
                           r"cyclepkg\.a -> cyclepkg\.b -> cyclepkg\.a$"):
            check_no_import_cycles("cyclepkg")
    finally:
        _drop_modules("cyclepkg")
    assert [c.path for c in cycles] == [["cyclepkg.a", "cyclepkg.b", "cyclepkg.a"]], _describe(cycles)
    assert [c.group for c in cycles] == [["cyclepkg.a", "cyclepkg.b"]]


def test_import_contracts_kept():
    """``lint-imports`` (import-linter, configured in pyproject.toml) finds every contract kept."""
    beside = Path(sys.executable).parent / "lint-imports"  # this interpreter's, before any other
    exe = str(beside) if beside.exists() else shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed")
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "0 broken" in output, output


def _package_of(module: str, packages: set[str]) -> str:
    """The package a module belongs to: itself if it is a package, else its parent."""
    return module if module in packages else module.rpartition(".")[0]


def _private_part(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def find_private_imports(package: str, shared: Collection[str] = ()) -> list[str]:
    """Imports of a private module (``package.X._y``) from outside the package that owns it.

    The owner of ``a.b._c._d`` is ``a.b``: only ``a.b`` and the modules under it may import it.
    ``shared`` names private modules that every module may import.
    """
    graph = grimp.build_graph(package, include_external_packages=False, cache_dir=None)
    packages = {m for m in graph.modules if graph.find_children(m)}
    bad = []
    for imported in sorted(graph.modules):
        parts = imported.split(".")
        private = [i for i, part in enumerate(parts) if i > 0 and _private_part(part)]
        if not private or imported in shared:
            continue
        owner = ".".join(parts[: private[0]])
        for importer in sorted(graph.find_modules_that_directly_import(imported)):
            home = _package_of(importer, packages)
            if home == owner or home.startswith(owner + "."):
                continue
            lines = graph.get_import_details(importer=importer, imported=imported)
            where = ", ".join(f"line {d['line_number']}" for d in lines)
            bad.append(f"{importer} imports {imported} ({where})")
    return bad


def test_no_private_imports_across_packages():
    """``sxtdask.X._y`` is imported only from inside ``sxtdask.X`` (its ``__init__`` re-exports)."""
    bad = find_private_imports(PACKAGE, SHARED_PRIVATE)
    assert not bad, "private modules imported from outside their package:\n" + "\n".join(bad)


def test_private_import_finder_reports_one(tmp_path, monkeypatch):
    """The private-import check is not vacuous: a cross-package private import is reported."""
    pkg = tmp_path / "privpkg"
    for sub in ("", "a", "b"):
        (pkg / sub).mkdir(exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "_shared.py").write_text("")
    (pkg / "a" / "_impl.py").write_text("")
    (pkg / "a" / "api.py").write_text("from privpkg.a import _impl\n")  # inside its package: fine
    (pkg / "b" / "use.py").write_text("import privpkg._shared\n\ndef f():\n"
                                      "    from privpkg.a._impl import x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        bad = find_private_imports("privpkg", {"privpkg._shared"})
    finally:
        _drop_modules("privpkg")
    assert bad == ["privpkg.b.use imports privpkg.a._impl (line 4)"], bad


def _packages() -> list[str]:
    graph = grimp.build_graph(PACKAGE, include_external_packages=False, cache_dir=None)
    return sorted(m for m in graph.modules if graph.find_children(m) or m == PACKAGE)


@pytest.mark.parametrize("name", _packages())
def test_package_all_names_exist(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"
    assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ repeats names"
