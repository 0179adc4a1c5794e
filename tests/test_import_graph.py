"""The import graph of our packages: layers run one way and no module cycle exists.

Edges are read from the source with ``ast``: every ``import`` of one of our modules, at module
level or inside a function (a deferred import still couples the two modules), except those under
``if TYPE_CHECKING:`` (types only, never executed). Layers: ``streamer → engines ← build_engine``;
``engines`` imports neither, and ``streamer`` and ``build_engine`` do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engines", "build_engine", "streamer")
ALLOWED = {"engines": {"engines"}, "build_engine": {"build_engine", "engines"}, "streamer": {"streamer", "engines"}}


def our_modules() -> dict[str, Path]:
    """Dotted module name → source file, for every module of :data:`PACKAGES`."""
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            mods[name] = path
    return mods


def _type_checking_only(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the modules of ours it imports (see the module docstring for what counts)."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        todo: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
        while todo:
            for node in ast.iter_child_nodes(todo.pop()):
                if isinstance(node, ast.If) and _type_checking_only(node):
                    todo.extend(node.orelse)
                    continue
                targets: list[str | None] = []
                if isinstance(node, ast.Import):
                    targets = [resolve(a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    targets = [resolve(f"{node.module}.{a.name}") or resolve(node.module) for a in node.names]
                graph[mod].update(t for t in targets if t is not None and t != mod)
                todo.append(node)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_module_imports_another_that_imports_it_back() -> None:
    assert cycles(import_graph(our_modules())) == []


def test_layers_run_one_way() -> None:
    graph = import_graph(our_modules())
    wrong = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts
                   if t.split(".")[0] not in ALLOWED[m.split(".")[0]])
    assert wrong == []


def test_the_cycle_finder_finds_a_cycle_and_the_layer_rule_a_violation() -> None:
    graph = {"streamer.a": {"streamer.b"}, "streamer.b": {"streamer.c"}, "streamer.c": {"streamer.a"},
             "engines.x": {"streamer.a"}, "engines.y": set()}
    assert cycles(graph) == [["streamer.a", "streamer.b", "streamer.c"]]
    assert [t for m, ts in graph.items() for t in ts if t.split(".")[0] not in ALLOWED[m.split(".")[0]]] \
        == ["streamer.a"]
