"""Layers point one way and no module imports itself back (DESIGN.md: "Layers point one way").

Every import counts — module-level, inside a function (lazy) and under `TYPE_CHECKING` — read from
the source, so nothing is imported to check it. `from mechcheck.pkg import name` depends on the
package's `__init__` (and on `mechcheck.pkg.name` when that is a module): inside a package whose
`__init__` imports its own modules, import a sibling as `import mechcheck.pkg.sub as sub` or
`from mechcheck.pkg.sub import name`.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mechcheck"


@cache
def module_files() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source in modules:
                out.add(source)
            out |= {f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules}
    return out - {name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def package(name: str) -> str:
    """`report` for mechcheck.report and its modules; `(top)` for top-level modules."""
    parts = name.split(".")
    is_package = module_files()[name].name == "__init__.py"
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and is_package) else "(top)"


def reachable(graph: dict[str, set[str]], starts: set[str]) -> set[str]:
    seen, todo = set(starts), list(starts)
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_is_read(graph) -> None:
    assert "mechcheck.stats" in graph["mechcheck.battery.aggregate"]
    assert "mechcheck.battery.context" in graph["mechcheck.battery.base"]  # under TYPE_CHECKING
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycles(graph) -> None:
    found = cycles(graph)
    assert not found, f"import cycles: {[sorted(c) for c in found]}"


def test_report_is_a_leaf(graph) -> None:
    """The report renders files: nothing it imports, directly or not, computes them."""
    report = {m for m in graph if package(m) == "report"}
    above = {m for m in reachable(graph, report) if package(m) not in ("report", "(top)")}
    assert not above, f"report/ reaches {sorted(above)}"
    top = {m for m in reachable(graph, report) if package(m) == "(top)"}
    assert top <= {
        "mechcheck",
        "mechcheck.errors",
        "mechcheck.neuron",
        "mechcheck.outputs",
        "mechcheck.records",
        "mechcheck.results_record",
        "mechcheck.run_record",
        "mechcheck.stats",
    }  # the records the report reads (plain data, no model code)


@pytest.mark.parametrize("layer", ["train", "battery", "cross"])
def test_computing_layers_never_import_the_report(graph, layer: str) -> None:
    mine = {m for m in graph if package(m) == layer}
    wrong = sorted((m, w) for m in mine for w in graph[m] if package(w) == "report")
    assert not wrong, f"{layer}/ imports report/: {wrong}"


def test_cross_uses_the_battery_through_nothing_but_shared_modules(graph) -> None:
    cross = {m for m in graph if package(m) == "cross"}
    wrong = sorted((m, w) for m in cross for w in graph[m] if package(w) in ("battery", "report"))
    assert not wrong, f"cross/ reaches into {wrong}"


def test_stats_imports_nothing_of_mechcheck(graph) -> None:
    assert graph["mechcheck.stats"] == set()
    assert graph["mechcheck.batching"] == set()
