"""The shape of the package, read from its imports with `ast` (docs/architecture.md): no import cycles, each
floor imports only the floors below it, and nothing outside the workshop imports the workshop."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "specviz"

# Each floor may import its own floor and the floors with a lower number; the workshop stands beside them.
FLOORS = {
    "paths": 0,
    "shown": 0,
    "lazy": 0,
    "speedup": 0,
    "engine": 1,
    "models": 2,
    "methods": 3,
    "api": 4,
    "analysis": 5,
    "views": 6,
    "bench": 7,
    "app": 8,
    "workshop": 9,
}
MAX_FUNCTION_LEVEL = 20


def module_name(path: Path) -> str:
    parts = ("specviz",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported specviz module, inside a function?, line) for every import in `path`."""
    tree = ast.parse(path.read_text())
    inner = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
    }
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for target in targets:
            if target.startswith("specviz.") and target != name:
                found.append((target, id(node) in inner, node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): {t for t, _, _ in imports(p)} for p in PACKAGE.rglob("*.py")}


def floor(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if module.count(".") else "__init__"
    return top, FLOORS.get(top, -1)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            # a package's __init__ is imported along with its submodules; it is not an edge back
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_floor():
    homeless = [m for m in graph() if m != "specviz" and floor(m)[1] < 0]
    assert homeless == [], f"add these to FLOORS and docs/architecture.md: {homeless}"


def test_each_floor_imports_only_the_floors_below():
    breaks = []
    for module, targets in graph().items():
        if module == "specviz":
            continue
        top, level = floor(module)
        for target in targets:
            their_top, their_level = floor(target)
            if their_top == "workshop" and top != "workshop":
                breaks.append(f"{module} imports the workshop ({target})")
            elif their_level > level and their_top != "workshop":
                breaks.append(f"{module} (floor {top}) imports {target} (floor {their_top}, above it)")
    assert breaks == []


def test_nothing_outside_the_workshop_imports_it():
    root = PACKAGE.parent
    outside = [p for p in list(PACKAGE.rglob("*.py")) + [root / "app.py"] if "workshop" not in p.parts]
    offenders = [
        f"{p.relative_to(root)}:{line}"
        for p in outside
        for target, _, line in imports_anywhere(p)
        if target.startswith("specviz.workshop")
    ]
    assert offenders == []


def imports_anywhere(path: Path) -> list[tuple[str, bool, int]]:
    if path.is_relative_to(PACKAGE):
        return imports(path)
    tree = ast.parse(path.read_text())
    return [
        (a.name if isinstance(n, ast.Import) else n.module or "", False, n.lineno)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    ]


def function_level_imports(path: Path) -> list[int]:
    """Lines of every import inside a function of `path` (specviz's own and any library's)."""
    tree = ast.parse(path.read_text())
    return sorted(
        {
            node.lineno
            for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn)
            if isinstance(node, (ast.Import, ast.ImportFrom))
        }
    )


def test_function_level_imports_are_few_and_say_why():
    """Only where one keeps a heavy library out of a process that does not need it, with a comment saying so."""
    inner = [(p, line) for p in PACKAGE.rglob("*.py") for line in function_level_imports(p)]
    assert len(inner) <= MAX_FUNCTION_LEVEL
    silent = [f"{p.name}:{line}" for p, line in inner if "#" not in p.read_text().splitlines()[line - 1]]
    assert silent == [], "a function-level import says on its line which heavy library it keeps out"
    assert not any(target for p in PACKAGE.rglob("*.py") for target, in_function, _ in imports(p) if in_function), (
        "specviz's own modules are imported at the top: a cycle is fixed, not hidden"
    )
