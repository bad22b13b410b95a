"""The package's shape, as ARCHITECTURE.md draws it: no import circles between modules or between
rooms (every import counts, lazy and type-only ones too), no module past about 600 lines without a
reason, and a `Library` whose methods only hand calls on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "blipsearch"
BENCHMARKS = ROOT / "benchmarks"
MAX_LINES = 600
# Modules allowed past MAX_LINES, each with the reason it is one file (none now).
LONG_MODULES: dict[str, str] = {}


def _modules(folder: Path, top: str) -> dict[str, Path]:
    found = {}
    for path in folder.rglob("*.py"):
        parts = [top, *path.relative_to(folder).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path], flat: bool) -> set[str]:
    """The known modules ``name`` imports anywhere in its file. ``flat``: a folder of scripts that
    import each other by bare name (benchmarks/)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = f"{package[0]}.{node.module}" if flat and node.module else node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif isinstance(node, ast.Import):
            found.update(f"{package[0]}.{a.name}" if flat else a.name for a in node.names)
    return {m for m in found if m in known and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _graph(folder: Path, top: str, flat: bool = False) -> dict[str, set[str]]:
    known = _modules(folder, top)
    return {name: _imports(name, path, known, flat) for name, path in known.items()}


def _room(module: str) -> str:
    """A module's room: its sub-package, or the module itself at the package's top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert _cycles(_graph(PACKAGE, "blipsearch")) == []


def test_no_room_imports_one_that_imports_it_back() -> None:
    rooms: dict[str, set[str]] = {}
    for module, targets in _graph(PACKAGE, "blipsearch").items():
        rooms.setdefault(_room(module), set()).update(_room(t) for t in targets if _room(t) != _room(module))
    assert _cycles(rooms) == []
    # The parts below the composition root never reach up to it or to what is built on it.
    top = {"library", "cli", "web", "engine", "evaluation", "blipsearch"}
    for room in ("ann", "images", "models", "store", "rerank", "search", "describe", "texts", "index", "workspace"):
        assert not rooms.get(room, set()) & top, f"{room} imports {sorted(rooms[room] & top)}"


def test_no_benchmark_script_imports_one_that_imports_it_back() -> None:
    assert _cycles(_graph(BENCHMARKS, "benchmarks", flat=True)) == []


def test_the_cycle_check_finds_a_circle(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import g\n")  # a lazy import closes it
    (tmp_path / "c.py").write_text("from .a import b\n")
    assert _cycles(_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")))
def test_modules_stay_short(path: str) -> None:
    lines = len((ROOT / path).read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES or path in LONG_MODULES, f"{path} has {lines} lines"


def test_library_methods_only_hand_calls_on() -> None:
    """Library is the composition root: apart from ``__init__``, which builds the parts, each method
    is one statement (after its docstring)."""
    tree = ast.parse((PACKAGE / "library.py").read_text(encoding="utf-8"))
    (library,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Library"]
    methods = [n for n in library.body if isinstance(n, ast.FunctionDef) and n.name != "__init__"]
    assert len(methods) > 30
    for method in methods:
        body = [s for s in method.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        assert len(body) == 1, f"Library.{method.name} has {len(body)} statements"
    other = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name != "Library"]
    assert other == []
