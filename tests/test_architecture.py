"""The shape of the package, read from its imports with `ast` (docs/architecture.md): no import cycles, each
floor imports only the floors below it, and nothing outside the workshop imports the workshop."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

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
    "observe": 5.5,  # docs/architecture.md: above analysis, below views (the bench writes records, the page reads)
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


# The tree in docs/architecture.md: every module of specviz/ named in its floor's line (`engine/     trace, ...`;
# a leaf or api.py by its file name), and no name there that is not a module.
DOC = PACKAGE.parent / "docs" / "architecture.md"


def tree_lines(doc: str) -> dict[str, set[str]]:
    """{floor: the names its line gives} from the doc's first code block: a floor's line starts at an indent of two
    under `specviz/` (a package as `engine/`, leaves as their file names); deeper-indented lines continue it;
    comments (`# ...`) and parenthesized remarks name no module."""
    block = doc.split("```", 2)[1]
    lines: dict[str, set[str]] = {}
    floor = None
    inside = False
    for raw in block.splitlines():
        if raw.startswith("specviz/"):
            inside = True
            continue
        if inside and raw and not raw.startswith(" "):
            break  # the next top-level entry (scripts/, tests/ ...)
        if not inside or not raw.strip():
            continue
        text = re.sub(r"\([^)]*\)", "", raw.split("#", 1)[0])
        words = [w for w in re.split(r"[\s,:]+", text) if w]
        if len(raw) - len(raw.lstrip()) == 2:
            if words[0].endswith("/"):
                floor = words[0].rstrip("/")
                lines.setdefault(floor, set()).update(words[1:])
            else:  # leaves (and api.py): their file names, then prose
                floor = None
                for w in words:
                    if w.endswith(".py"):
                        lines.setdefault("", set()).add(w)
        elif floor is not None:
            lines[floor].update(words)
    return lines


def tree_gaps(lines: dict[str, set[str]]) -> tuple[list[str], list[str]]:
    """(modules the tree leaves out, names in the tree that are no module) against the files of specviz/."""
    omitted, stale = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if path.stem in ("__init__", "__main__"):
            continue
        if len(rel.parts) == 1:
            if rel.name not in lines.get("", set()):
                omitted.append(str(rel))
        elif "/".join(rel.with_suffix("").parts[1:]) not in lines.get(rel.parts[0], set()):
            omitted.append(str(rel))
    for floor, names in lines.items():
        for name in names:
            where = PACKAGE / name if floor == "" else PACKAGE / floor / f"{name}.py"
            if not where.is_file():
                stale.append(f"{floor}/{name}" if floor else name)
    return omitted, sorted(stale)


def test_the_architecture_tree_names_every_module():
    omitted, stale = tree_gaps(tree_lines(DOC.read_text()))
    assert omitted == [], f"docs/architecture.md's tree leaves out {omitted}: name each in its floor's line"
    assert stale == [], f"docs/architecture.md's tree names modules that are not there: {stale}"


def test_every_floor_has_a_line_in_the_tree_and_a_row_in_the_table():
    doc = DOC.read_text()
    lines = tree_lines(doc)
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert [p for p in packages if p not in lines] == []
    table = [line for line in doc.splitlines() if line.startswith("| `")]
    assert [p for p in packages if not any(f"| `{p}/`" in row for row in table)] == []


def test_the_tree_reader_sees_an_omission_and_a_stale_name():
    doc = "```\nspecviz/\n  paths.py   # leaves\n  engine/     trace, verify,\n"
    doc += "              gone (a remark)\nscripts/\n```"
    lines = tree_lines(doc)
    assert lines == {"": {"paths.py"}, "engine": {"trace", "verify", "gone"}}
    omitted, stale = tree_gaps(lines)
    assert "engine/kvcache.py" in omitted and "shown.py" in omitted and stale == ["engine/gone"]


# Lazily re-exported names (specviz/lazy.py; the `_EXPORTS` table of a package's __init__): the compatibility
# promise of docs/architecture.md. Each must resolve, and to the object the named module defines.
def export_tables() -> dict[str, dict[str, str]]:
    tables = {}
    for init in sorted(PACKAGE.rglob("__init__.py")):
        if "_EXPORTS" in init.read_text():
            package = module_name(init)
            tables[package] = importlib.import_module(package)._EXPORTS
    return tables


def defined_at_top(module: str, name: str) -> bool:
    """`name` is defined in `module`'s own source (def, class or assignment at its top level), not imported."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def test_every_lazily_re_exported_name_resolves_to_its_definition():
    tables = export_tables()
    assert set(tables) >= {"specviz", "specviz.models", "specviz.bench", "specviz.engine"}
    wrong = []
    for package, table in tables.items():
        imported = importlib.import_module(package)
        assert sorted(imported.__all__) == sorted(table), package
        for name, module in table.items():
            try:
                got = getattr(imported, name)
            except AttributeError as exc:
                wrong.append(f"{package}.{name}: {exc}")
                continue
            if got is not getattr(importlib.import_module(module), name) or not defined_at_top(module, name):
                wrong.append(f"{package}.{name} is not the {name} that {module} defines")
    assert wrong == []
    assert sum(len(t) for t in tables.values()) > 50


def test_a_name_not_re_exported_is_an_attribute_error():
    import specviz

    with pytest.raises(AttributeError, match="has no attribute 'selfcheck'"):
        specviz.selfcheck  # noqa: B018 - moved to specviz.models.selfcheck: not re-exported
