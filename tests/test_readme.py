"""The README's reference parts that code defines: the environment variables, and the paths of the prune example."""

from __future__ import annotations

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_environment_variable_ett_reads_is_in_the_readmes_table():
    read = set()
    for path in (ROOT / "ettcli").rglob("*.py"):
        read |= set(re.findall(r"""environ(?:\.get)?[\(\[]\s*["'](ETT_[A-Z_]+)["']""", path.read_text()))
    assert read >= {"ETT_DATA", "ETT_RUNS", "ETT_CACHE"}
    at = README.index("### Environment variables")
    table = README[at : README.index("\n\n", README.index("| variable |", at))]
    assert {v for v in read if f"| `{v}` |" not in table} == set()


def test_the_prune_examples_use_the_paths_imp_writes():
    from ettcli.lottery import TICKET

    lines = [x for x in README.splitlines() if x.startswith("ett prune ")]
    imp = next(x for x in lines if x.startswith("ett prune imp "))
    source = imp.split()[3]
    assert "--out" not in imp  # so its folder is the default, imp-<source>
    layout = re.compile(rf"imp-{re.escape(source)}/level_\d\d/{re.escape(TICKET)}$")
    named = [w for x in lines if x is not imp for w in x.split() if "/" in w and w.endswith(".safetensors")]
    assert named and all(layout.match(w) for w in named), named
    assert f"imp-{source}/level_00/{TICKET}" in named  # the rewind-point weights the baselines prune
