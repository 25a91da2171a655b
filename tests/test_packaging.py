"""What an installed ett carries besides the code: the shipped studies (`ett study init`) and the FLOPs table."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import ROOT


def test_an_installed_ett_carries_the_shipped_studies_and_the_flops_table(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ettcli", src / "ettcli", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "studies", src / "studies")
    (src / "studies" / "cifar10-mini").mkdir(exist_ok=True)  # a study's results, as the mini study's
    (src / "studies" / "cifar10-mini" / "report.md").write_text("# results\n")
    # setuptools' build_py lays out what a wheel or an install gets (packages and package data), offline
    lib = tmp_path / "lib"
    code = "import setuptools; setuptools.setup()"
    r = subprocess.run([sys.executable, "-c", code, "-q", "build_py", "--build-lib", str(lib)],
                       capture_output=True, text=True, cwd=src)  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = {p.relative_to(lib).as_posix() for p in lib.rglob("*") if p.is_file()}
    shipped = {f"ettcli/studies/{p.name}" for p in (ROOT / "studies").glob("*.toml")}
    assert shipped and shipped <= names
    assert "ettcli/flops_table.json" in names
    assert not any(n.startswith("ettcli/studies/cifar10-mini/") for n in names)  # results stay in the repository
