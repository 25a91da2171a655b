"""Print the shape of ettcli's import graph, read from the source alone (ast; nothing is imported).

    python scripts/import_graph.py [PACKAGE_DIR] [--top N]

What it prints:

- the number of modules and of import edges between them;
- import cycles: the strongly connected components of the graph of top-level imports, and separately those
  closed only by lazy imports (an ``import`` inside a function body), each with one shortest cycle;
- the longest functions and methods, with their line counts (``def`` line to last line);
- private names (``_x``) that one module imports from another, by ``from m import _x`` or ``m._x``.

Imports under ``if TYPE_CHECKING:`` are type-only and counted apart. Imports built from strings at run time
(``importlib.import_module(name)``) are not seen.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_names(package: Path) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Visitor(ast.NodeVisitor):
    """Collects the imports of one module, each tagged top-level, lazy or type-only."""

    def __init__(self, module: str, is_package: bool, modules: dict[str, Path]):
        self.module, self.is_package, self.modules = module, is_package, modules
        self.depth = 0  # function nesting
        self.type_only = 0
        self.edges: list[tuple[str, str, int]] = []  # (target, kind, line)
        self.private: list[tuple[str, str, int]] = []  # (target module, name, line)
        self.aliases: dict[str, str] = {}  # local name -> ettcli module

    def _kind(self) -> str:
        return "type" if self.type_only else ("lazy" if self.depth else "top")

    def _inside(self, name: str) -> str | None:
        """The package's module that ``import name`` loads, or None for anything outside the package."""
        while name and name not in self.modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node):
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        if guarded:
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            target = self._inside(alias.name)
            if target is None:
                continue
            self.edges.append((target, self._kind(), node.lineno))
            if alias.asname:
                self.aliases[alias.asname] = target

    def visit_ImportFrom(self, node):
        source = _absolute(self.module, self.is_package, node)
        if source == "__future__" or self._inside(source) is None:
            return
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            if sub in self.modules:  # from package import submodule
                self.edges.append((sub, self._kind(), node.lineno))
                self.aliases[alias.asname or alias.name] = sub
                continue
            target = self._inside(source)
            self.edges.append((target, self._kind(), node.lineno))
            if _private(alias.name) and target != self.module:
                self.private.append((target, alias.name, node.lineno))

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases and _private(node.attr):
            target = self.aliases[node.value.id]
            if target != self.module:
                self.private.append((target, node.attr, node.lineno))
        self.generic_visit(node)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _sccs(nodes: list[str], graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
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
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in nodes:
        if v not in index:
            strong(v)
    return sorted(found)


def _path(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A shortest import path from start to goal (breadth first, ties by name)."""
    previous = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        if v == goal:
            path = []
            while v is not None:
                path.append(v)
                v = previous[v]
            return path[::-1]
        for w in sorted(graph.get(v, ())):
            if w not in previous:
                previous[w] = v
                queue.append(w)
    return None


def _functions(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line count, qualified name) of every function and method, nested ones included."""
    found = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                found.append((child.end_lineno - child.lineno + 1, f"{module}:{name} (line {child.lineno})"))
                walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return found


@dataclass
class Graph:
    """What :func:`analyse` finds in a package."""

    modules: dict[str, Path]
    lines: int
    top: dict[str, set[str]]  # module -> modules it imports at top level
    lazy: dict[str, set[str]]  # module -> modules it imports only inside functions
    lazy_lines: dict[tuple[str, str], int]
    type_only: int
    private: list[tuple[str, str, str, int]]  # (importing module, imported module, name, line)
    functions: list[tuple[int, str]]  # (line count, where)

    @property
    def full(self) -> dict[str, set[str]]:
        return {m: self.top[m] | self.lazy[m] for m in self.modules}

    @property
    def top_cycles(self) -> list[list[str]]:
        return _sccs(sorted(self.modules), self.top)

    @property
    def lazy_cycles(self) -> list[list[str]]:
        """Cycles of the whole graph that the top-level graph does not have (closed by lazy imports)."""
        top = self.top_cycles
        return [c for c in _sccs(sorted(self.modules), self.full) if c not in top]


def analyse(package: str | Path) -> Graph:
    """Read every module of ``package`` (a folder) and collect its imports, functions and private imports."""
    modules = module_names(Path(package).resolve())
    graph = Graph(modules, 0, {m: set() for m in modules}, {m: set() for m in modules}, {}, 0, [], [])
    for module, path in modules.items():
        text = path.read_text(encoding="utf-8")
        graph.lines += len(text.splitlines())
        tree = ast.parse(text, filename=str(path))
        visitor = _Visitor(module, path.name == "__init__.py", modules)
        visitor.visit(tree)
        for target, kind, line in visitor.edges:
            if target == module:
                continue
            if kind == "top":
                graph.top[module].add(target)
            elif kind == "lazy":
                graph.lazy[module].add(target)
                graph.lazy_lines.setdefault((module, target), line)
            else:
                graph.type_only += 1
        graph.private += [(module, target, name, line) for target, name, line in visitor.private]
        graph.functions += _functions(tree, module)
    for module in modules:
        graph.lazy[module] -= graph.top[module]
    return graph


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default=str(ROOT / "ettcli"), help="the package folder")
    parser.add_argument("--top", type=int, default=15, help="how many of the longest functions to list")
    args = parser.parse_args(argv)

    graph = analyse(args.package)
    edges_top = sum(len(v) for v in graph.top.values())
    edges_lazy = sum(len(v) for v in graph.lazy.values())
    print(f"package: {Path(args.package).name}/")
    print(f"modules: {len(graph.modules)} ({graph.lines} lines)")
    print(f"import edges between modules: {edges_top} top-level, {edges_lazy} lazy only (inside functions)")
    if graph.type_only:
        print(f"type-only imports (if TYPE_CHECKING): {graph.type_only}")

    print()
    top_cycles = graph.top_cycles
    print(f"import cycles among top-level imports: {len(top_cycles)}")
    for component in top_cycles:
        print(f"  {' <-> '.join(component)}")
    lazy_cycles = graph.lazy_cycles
    print(f"import cycles closed by lazy imports: {len(lazy_cycles)}")
    full = graph.full
    for component in lazy_cycles:
        print(f"  component of {len(component)}: {', '.join(component)}")
        members = set(component)
        for module in component:
            for target in sorted(graph.lazy[module] & members):
                back = _path({m: full[m] & members for m in members}, target, module)
                cycle = " -> ".join([module, *back]) if back else f"{module} -> {target}"
                print(f"    lazy {module} -> {target} (line {graph.lazy_lines[(module, target)]}): {cycle}")

    print()
    functions = graph.functions
    print(f"longest functions (top {args.top} of {len(functions)}, lines from def to end):")
    for count, name in sorted(functions, key=lambda f: (-f[0], f[1]))[: args.top]:
        print(f"  {count:4d}  {name}")

    print()
    print(f"private names imported across modules: {len(graph.private)}")
    for module, target, name, line in sorted(graph.private):
        print(f"  {module} (line {line}) <- {target}.{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
