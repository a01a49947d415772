"""The package's floors: no import (at the top of a file or inside a function) from a lower floor to a higher
one, and no import loop between modules or between folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fusionrt"

# Bottom to top. A unit is a top-level module or folder of fusionrt; it may import its own floor's other
# units and every lower floor, never a higher one.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("__init__", "errors", "io", "progress"),
    ("bundle", "data"),
    ("model", "train_config"),
    ("runtime",),
    ("engine", "parity", "app", "train", "train_match", "search", "caption", "train_caption"),
    ("calibration", "bench", "export", "report"),
    ("pipeline", "serve", "cli", "__main__"),
)
FLOOR_OF = {unit: level for level, units in enumerate(FLOORS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path, name: str | None = None) -> set[str]:
    """Every fusionrt module ``path`` (module ``name``) imports, at any depth of the file (functions included).
    ``from package import submodule`` counts as importing the submodule only."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "fusionrt")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fusionrt":
                continue
            submodules = {f"{target}.{alias.name}" for alias in node.names if is_module(f"{target}.{alias.name}")}
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(target)
    return found


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[module_name(path)] = imports_of(path)
    known = set(graph)
    return {name: {t for t in targets if t in known and t != name} for name, targets in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
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


def test_every_unit_has_a_floor():
    units = {unit_of(name) for name in module_graph()}
    assert units - set(FLOOR_OF) == set(), "add the new folder or module to FLOORS"


def test_no_import_from_a_lower_floor_to_a_higher_one():
    upward = sorted(f"{src} -> {dst}" for src, targets in module_graph().items() for dst in targets
                    if FLOOR_OF[unit_of(dst)] > FLOOR_OF[unit_of(src)])
    assert upward == []


def test_no_import_loop_between_folders():
    folders: dict[str, set[str]] = {}
    for src, targets in module_graph().items():
        folders.setdefault(unit_of(src), set()).update(unit_of(t) for t in targets if unit_of(t) != unit_of(src))
    assert cycles(folders) == []


def test_no_import_loop_between_modules():
    assert cycles(module_graph()) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
])
def test_cycle_finder_finds_a_planted_loop(graph, expected):
    assert cycles(graph) == expected


def test_imports_inside_functions_are_seen(tmp_path):
    """The walker must see a function-level import, or hidden loops (both ends importing lazily) slip by."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    if True:\n        from fusionrt.cli import main\n"
                       "        import fusionrt.pipeline.run\n")
    assert imports_of(planted, "fusionrt.bundle.planted") == {"fusionrt.cli", "fusionrt.pipeline.run"}
