"""The layout rules of the project (STYLE.md): no import cycle between modules of src/distillguard,
and no module over 500 lines. Imports are read with ``ast`` (module level, inside functions and
under ``if TYPE_CHECKING``), relative imports resolved; a cycle is reported as its chain."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "distillguard"
MAX_LINES = 500


def module_names(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Every module under src/<package>: dotted name → file (a package is its __init__.py)."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return name in modules and modules[name].name == "__init__.py" or any(m.startswith(name + ".") for m in modules)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``name`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        # the deepest module of ours that the dotted name names (a.b.c.func → a.b.c)
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if not (origin == PACKAGE or origin.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                # `from pkg import mod` imports the module pkg.mod; `from mod import func` imports mod
                child = f"{origin}.{alias.name}"
                add(child if child in modules or _is_package(child, modules) else origin)
    return found


def import_graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(src, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed chain a → … → a) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0

    def connect(v: str) -> None:    # Tarjan's algorithm (recursion depth: the number of modules)
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for comp in components:
        start = min(comp)
        # shortest way back to start inside the component (breadth first)
        prev: dict[str, str] = {}
        frontier, seen, end = [start], {start}, None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w == start:
                        end = v
                        break
                    if w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        chain = [end]
        while chain[-1] != start:
            chain.append(prev[chain[-1]])
        cycles.append([start] + chain[::-1][1:] + [start] if len(chain) > 1 else [start, start])
    return cycles


def test_no_import_cycle_between_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_no_module_over_500_lines():
    long = {str(p.relative_to(SRC)): n for p in sorted((SRC / PACKAGE).rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


# -- the checker itself, on small trees written here ----------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "distillguard" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_checker_finds_a_cycle_through_a_function_level_relative_import(tmp_path):
    src = _tree(tmp_path, {
        "__init__.py": "",
        "det/__init__.py": "",
        "det/a.py": "from distillguard.det.b import f\n",
        "det/b.py": "def f():\n    from .c import g\n    return g\n",
        "det/c.py": "import distillguard.det.a\n",
        "det/d.py": "from . import a\n",
    })
    graph = import_graph(src)
    assert graph["distillguard.det.b"] == {"distillguard.det.c"}
    assert graph["distillguard.det.d"] == {"distillguard.det.a"}
    assert find_cycles(graph) == [["distillguard.det.a", "distillguard.det.b", "distillguard.det.c",
                                   "distillguard.det.a"]]


def test_checker_resolves_parent_relative_imports_and_passes_an_acyclic_tree(tmp_path):
    src = _tree(tmp_path, {
        "__init__.py": "",
        "x/__init__.py": "from .y import Y\n",
        "x/y.py": "from ..z import Z\nclass Y: ...\n",
        "z.py": "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from distillguard.w import W\n"
                "class Z: ...\n",
        "w.py": "from distillguard.x.y import Y\n",
    })
    graph = import_graph(src)
    assert graph["distillguard.x"] == {"distillguard.x.y"}
    assert graph["distillguard.x.y"] == {"distillguard.z"}
    assert graph["distillguard.z"] == {"distillguard.w"}
    assert find_cycles(graph) == [["distillguard.w", "distillguard.x.y", "distillguard.z", "distillguard.w"]]
    (src / "distillguard" / "z.py").write_text("class Z: ...\n", encoding="utf-8")
    assert find_cycles(import_graph(src)) == []


@pytest.mark.parametrize("files, cycle", [
    ({"__init__.py": "", "a.py": "import distillguard.a\n"}, None),       # importing itself is not a cycle
    ({"__init__.py": "from distillguard import b\n", "b.py": "import distillguard\n"},
     ["distillguard", "distillguard.b", "distillguard"]),
])
def test_checker_edge_cases(tmp_path, files, cycle):
    cycles = find_cycles(import_graph(_tree(tmp_path, files)))
    assert cycles == ([cycle] if cycle else [])
