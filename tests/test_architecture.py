"""The layers of ``docs/architecture.md`` as a contract over the import graph of src/splitfed.

Every import counts, lazy ones inside functions included; only ``if TYPE_CHECKING:`` blocks are left out
(they never run). ``from package import name`` imports the submodule ``package.name`` where there is
one, else the package. The contract: no circle of imports anywhere, and each part imports only the parts
the table allows.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "splitfed"

# Each module's part (a module is in the part of its longest matching prefix).
PARTS = {
    "splitfed.config": "base",
    "splitfed.choices": "base",
    "splitfed.typed": "base",
    "splitfed.validate": "base",
    "splitfed.sections": "base",
    "splitfed.registry": "base",
    "splitfed.errors": "base",
    "splitfed._rng": "base",
    "splitfed._log": "base",
    "splitfed._limits": "base",
    "splitfed.data": "data",
    "splitfed.models": "models",
    "splitfed.engine": "engine",
    "splitfed.algorithms": "algorithms",
    "splitfed.executors": "executors",
    "splitfed.services": "services",
    "splitfed.setup": "setup",
    "splitfed.setup_data": "setup",
    "splitfed.setup_model": "setup",
    "splitfed.preflight": "setup",
    "splitfed.analysis": "face",  # a study's tables and report, beside report.py and sweep.py
    "splitfed": "face",
}
ALLOWED = {
    "base": {"base"},
    "data": {"base"},
    "models": {"base"},
    "engine": {"base", "data", "models"},
    "algorithms": {"engine", "base"},
    "setup": {"data", "models", "engine", "base"},
    "executors": {"algorithms", "engine", "data", "models", "base", "setup"},
    # the gRPC services are one more executor: what an executor may use, and the other executors
    "services": {"executors", "algorithms", "engine", "data", "models", "base", "setup"},
    "face": {"face", "services", "executors", "algorithms", "setup", "engine", "data", "models", "base"},
}


def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        unused = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body
            for n in ast.walk(stmt)
        }
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in unused:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def part_of(module: str) -> str:
    return PARTS[max((p for p in PARTS if module == p or module.startswith(p + ".")), key=len)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_module_imports_itself_through_a_circle_lazy_imports_included():
    assert cycles(import_graph()) == []


def violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} ({part_of(module)}) imports {target} ({part_of(target)})"
        for module, targets in graph.items()
        for target in targets
        if part_of(target) not in {part_of(module), *ALLOWED[part_of(module)]}
    )


def test_each_part_imports_only_the_parts_below_it():
    assert violations(import_graph()) == []


def test_a_planted_back_import_or_circle_is_caught():
    graph = import_graph()
    graph["splitfed.engine.side"].add("splitfed.algorithms.base")  # the engine would know an algorithm
    graph["splitfed.config"].add("splitfed.setup")  # a lazy import closing a circle through the setup
    assert violations(graph) == [
        "splitfed.config (base) imports splitfed.setup (setup)",
        "splitfed.engine.side (engine) imports splitfed.algorithms.base (algorithms)",
    ]
    assert any({"splitfed.config", "splitfed.setup"} <= set(circle) for circle in cycles(graph))


@pytest.mark.parametrize(
    ("graph", "circle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
    ],
)
def test_the_circle_finder_finds_a_circle_and_only_a_circle(graph, circle):
    assert cycles(graph) == circle


def test_the_graph_sees_lazy_imports_and_from_package_import_module():
    graph = import_graph()
    assert "splitfed.preflight" in graph["splitfed.cli"]  # imported inside a function
    assert "splitfed.registry" in graph["splitfed.models"]  # from .. import registry
