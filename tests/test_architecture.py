"""The package's shape, checked: no private names imported across modules, no import cycles
between modules, no oversized source files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "efficientdet"
MAX_LINES = 430  # "files under ~400 lines"
MAX_FUNCTION_LINES = 70  # "functions under ~60", docstring and signature included


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(path: Path, name: str) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every import in ``path``, function-level too."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # Imports under ``if TYPE_CHECKING:`` never run: annotations only, not dependencies.
    typing_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for child in ast.walk(stmt)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
    return found


def _resolve(module: str, names: list[str], modules: dict[str, Path]) -> set[str]:
    """The project modules an import statement loads (a submodule named in ``names`` too)."""
    targets = set()
    if module in modules:
        targets.add(module)
    for n in names:
        if f"{module}.{n}" in modules:
            targets.add(f"{module}.{n}")
    return targets


def test_no_private_names_imported_across_modules() -> None:
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        for module, names, line in _imports(path, name):
            if not module.startswith("efficientdet"):
                continue
            private_module = any(part.startswith("_") for part in module.split("."))
            private_names = [n for n in names if n.startswith("_") and n != "__version__"]
            if private_module or private_names:
                offenders.append(f"{path.relative_to(SRC.parent)}:{line}: {module} {private_names}")
    assert not offenders, "private imports:\n" + "\n".join(offenders)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for module, names, _ in _imports(path, name):
            edges |= _resolve(module, names, modules)
        # A package's __init__ is loaded with any of its modules: not an edge that makes a cycle.
        graph[name] = {t for t in edges if t != name and not name.startswith(t + ".")}
    return graph


def test_no_import_cycles_between_modules() -> None:
    graph = _graph()
    # Package __init__ files only re-export (lazily): edges into them are not real dependencies.
    packages = {n for n in graph if (SRC.parent / Path(*n.split(".")) / "__init__.py").exists()}
    graph = {n: {t for t in e if t not in packages} for n, e in graph.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_source_files_stay_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC.parent)} has {lines} lines (keep modules under ~400)"


def test_functions_stay_short() -> None:
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over ~60 lines:\n" + "\n".join(long)
