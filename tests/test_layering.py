"""The package's imports point one way: every import of a towerrec module (at the top of a file or inside a
function) goes to the same layer or a lower one, and no set of modules imports itself in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "towerrec"

# lowest first; a module may import its own layer and the layers before it
LAYERS = ("utils", "data", "evaluation", "model", "baselines", "index", "artifact", "retrieval", "rerank",
          "batch", "serving", "reporting", "tasks")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, is_package: bool) -> set[str]:
    """Every towerrec module `path` imports, anywhere in the file (relative imports resolved)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] == "towerrec"}


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the towerrec modules it imports (`from towerrec.a import b` counts as towerrec.a.b when b is a
    module, else as towerrec.a); package __init__ files count as the package."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for target in imports_of(path, name, path.name == "__init__.py"):
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself
        return -1
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")
    return LAYERS.index(parts[1])


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets if layer(t) > layer(m))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), excluding package __init__ re-exports
    of their own submodules (a package importing its children is not a circle of logic)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def edges(v: str) -> set[str]:
        return {w for w in graph[v] if not w.startswith(v + ".")}

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges(v):
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


def test_every_module_has_a_layer():
    for module in import_graph(PACKAGE):
        layer(module)


def test_no_import_points_up_the_layers():
    assert upward_imports(import_graph(PACKAGE)) == []


def test_no_import_circle():
    assert circles(import_graph(PACKAGE)) == []


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    """The same checks on a small package with one upward import (data -> tasks) and one circle."""
    root = tmp_path / "towerrec"
    for rel, text in {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/load.py": "def load():\n    from towerrec.tasks.train import train  # inside a function\n",
        "data/a.py": "from towerrec.data import b\n",
        "data/b.py": "import towerrec.data.a\n",
        "tasks/__init__.py": "",
        "tasks/train.py": "from towerrec.data.load import load\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    graph = import_graph(root)
    assert upward_imports(graph) == ["towerrec.data.load -> towerrec.tasks.train"]
    assert sorted(map(tuple, circles(graph))) == [("towerrec.data.a", "towerrec.data.b"),
                                                  ("towerrec.data.load", "towerrec.tasks.train")]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_says_what_it_owns(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and doc.strip(), f"{path}: start the module with a docstring saying what it owns"
