"""No import cycles in `pipeline/`, imports inside functions included.

A function-level import hides a cycle from Python (it only runs later) but not from a reader:
the two modules still depend on each other. Every `import` statement anywhere in a module counts,
`if TYPE_CHECKING:` blocks too (a reader follows those as well). Nodes are modules; a package's
`__init__` is a node of its own whose edges are what it imports, lazily named ones included
(a string naming a `pipeline` module, as in a `__getattr__` lookup table).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The `pipeline` modules that module `name` imports, wherever the import sits."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else base)
        elif is_package and isinstance(node, ast.Constant) and node.value in modules:
            targets.add(node.value)  # a lazily imported re-export
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_imports_inside_functions_and_lazy_reexports() -> None:
    graph = import_graph()
    # The loader imports the implementation it picked inside load_recognizer.
    assert "pipeline.compat.remote" in graph["pipeline.recognition"]
    # pipeline.model's __init__ names its modules as strings for lazy loading.
    assert "pipeline.model.checkpoint" in graph["pipeline.model"]


def test_find_cycle_reports_a_cycle_through_function_level_imports(tmp_path: Path) -> None:
    """Fault injection: a two-module package whose cycle hides in a function."""
    (tmp_path / "a.py").write_text("import b\n", encoding="utf-8")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n", encoding="utf-8")
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert find_cycle(graph) == ["a", "b", "a"]


def test_pipeline_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same imports between stage packages (`pipeline.runner`, ...) and top modules; the
    root package `pipeline` itself (its version) is left out."""

    def stage(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {stage(name): set() for name in graph if name != "pipeline"}
    for name, targets in graph.items():
        if name != "pipeline":
            packages[stage(name)] |= {stage(t) for t in targets if t != "pipeline"} - {stage(name)}
    return packages


def test_stage_packages_import_only_downwards() -> None:
    """No two stage packages use each other, even through different modules: the cluster is
    built on the runner, so the runner reaches it only through `pipeline.launch`."""
    cycle = find_cycle(package_graph(import_graph()))
    if cycle:
        pytest.fail("stage packages importing each other: " + " -> ".join(cycle))


def test_package_graph_sees_a_cycle_between_modules_that_do_not_form_one() -> None:
    """Fault injection: x.a imports y.b, y.c imports x.d; no module cycle, a package one."""
    graph = {"p.x.a": {"p.y.b"}, "p.y.b": set(), "p.y.c": {"p.x.d"}, "p.x.d": set()}
    assert find_cycle(graph) is None
    assert find_cycle(package_graph(graph)) == ["p.x", "p.y", "p.x"]
