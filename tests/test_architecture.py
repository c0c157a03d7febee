"""The package layout holds: imports go one way (cli -> ops/train/infer -> graph -> data -> store -> safety
-> foundation) and no module imports itself back through a circle. Reads the source; imports nothing of wtool.

Every import is counted, the lazy ones inside functions too: a lazy import hides a circle from
Python, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wtool"

# Layer of each top-level part of wtool; a module may import only from its own part or a lower layer.
LAYERS = {
    "foundation": 0,  # wtool/__init__.py, errors.py, fileio.py, text.py
    "safety": 1,
    "store": 2,
    "data": 3,
    "graph": 4,
    "ops": 5, "train": 5, "infer": 5,
    "cli": 6,
}
FOUNDATION = {"wtool", "wtool.errors", "wtool.fileio", "wtool.text"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The wtool module an import of `name` loads last: the module itself, else its package."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            if name == "wtool" or name.startswith("wtool."):
                target = _resolve(name)
                if target and target != module:
                    found.add(target)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _part(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    if module == "wtool.__main__":
        return "cli"
    return module.split(".")[1]


def test_every_part_has_a_layer():
    assert {_part(m) for m in MODULES} <= set(LAYERS), "a new top-level part of wtool needs a layer here"


def test_packages_say_what_they_own_and_may_import():
    for module, path in MODULES.items():
        if path.name == "__init__.py" and module.count(".") == 1:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "Owns:" in doc and "May import:" in doc, f"{module}: docstring must say what it owns and may import"


def _upward(module: str, imports: set[str]) -> list[str]:
    """Imports of `module` into a higher layer, or into a sibling part of its own layer (ops <-> train)."""
    mine = _part(module)
    return sorted(t for t in imports if _part(t) != mine and LAYERS[_part(t)] >= LAYERS[mine])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    assert _upward(module, GRAPH[module]) == [], f"{module} imports from a higher or sibling layer"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _cycles(GRAPH) == []


def test_the_checks_catch_a_circle_and_an_upward_import():
    fake = {"wtool.store.a": {"wtool.store.b"}, "wtool.store.b": {"wtool.store.a", "wtool.graph.model"},
            "wtool.ops.diff": {"wtool.train.loop", "wtool.store.a", "wtool"}}
    assert _cycles(fake) == [["wtool.store.a", "wtool.store.b"]]
    assert _upward("wtool.store.b", fake["wtool.store.b"]) == ["wtool.graph.model"]
    assert _upward("wtool.ops.diff", fake["wtool.ops.diff"]) == ["wtool.train.loop"]


def test_the_graph_is_read():
    """The reader finds real edges, lazy imports inside functions included."""
    assert "wtool.store.model_file" in GRAPH["wtool.store"]
    assert "wtool.safety.h5walk" in GRAPH["wtool.store.model_file"]  # imported inside a method
    assert "wtool.graph.model" in GRAPH["wtool.ops.rebuild"]
