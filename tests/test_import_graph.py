"""The shape of ettcli's import graph, read by scripts/import_graph.py: no cycles, private names stay home."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "import_graph.py"

# Private names another module still imports, each waiting for the refactor that removes it. A new one fails.
KNOWN_PRIVATE = {
    ("ettcli.plan", "ettcli.arch", "_NAME"),
}


def _load():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_the_import_graph_has_no_cycle_not_even_through_lazy_imports():
    graph = _load().analyse(ROOT / "ettcli")
    assert "ettcli.ticket" in graph.modules and "ettcli.open_lth" in graph.modules
    assert graph.top_cycles == []
    assert graph.lazy_cycles == []


def test_the_ticket_readers_are_layered_under_the_dispatcher():
    graph = _load().analyse(ROOT / "ettcli")
    full = graph.full
    assert "ettcli.open_lth" in full["ettcli.ticket"] and "ettcli.torchfile" in full["ettcli.ticket"]
    assert "ettcli.ticket" not in full["ettcli.open_lth"] and "ettcli.ticket" not in full["ettcli.torchfile"]


def test_no_new_private_name_crosses_a_module():
    graph = _load().analyse(ROOT / "ettcli")
    crossing = {(module, target, name) for module, target, name, _ in graph.private}
    assert crossing <= KNOWN_PRIVATE, sorted(crossing - KNOWN_PRIVATE)
    assert not any(target in ("ettcli.ticket", "ettcli.torchfile") for _, target, _ in crossing)


def test_the_script_sees_a_lazy_cycle_and_a_private_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import _helper\n\n\ndef f():\n    x = 1\n    y = x\n    return y\n")
    (pkg / "b.py").write_text("def _helper():\n    from pkg import a\n    return a\n")
    graph = _load().analyse(pkg)
    assert graph.top_cycles == []
    assert graph.lazy_cycles == [["pkg.a", "pkg.b"]]
    assert [(m, t, n) for m, t, n, _ in graph.private] == [("pkg.a", "pkg.b", "_helper")]
    assert sorted(graph.functions)[-1] == (4, "pkg.a:f (line 4)")
    printed = subprocess.run([sys.executable, str(SCRIPT), str(pkg)], capture_output=True, text=True, check=True)
    assert "import cycles closed by lazy imports: 1" in printed.stdout
    assert "lazy pkg.b -> pkg.a (line 2): pkg.b -> pkg.a -> pkg.b" in printed.stdout
    assert "pkg.a (line 1) <- pkg.b._helper" in printed.stdout


def test_every_ett_name_the_benchmarks_and_scripts_import_exists():
    """bench/ and scripts/ run outside the suite; a renamed function must not leave one of them broken."""
    import ast
    import importlib

    missing = []
    for path in sorted([*(ROOT / "bench").glob("*.py"), *(ROOT / "scripts").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ettcli"):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{alias.name}")
    assert missing == []
