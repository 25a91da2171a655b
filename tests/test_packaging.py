"""What a wheel of ett carries besides the code: the shipped studies (for `ett study init`) and the FLOPs table."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


def test_a_wheel_carries_the_shipped_studies_and_the_flops_table(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ettcli", src / "ettcli", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "studies", src / "studies")
    (src / "studies" / "cifar10-mini").mkdir(exist_ok=True)  # a study's results, as the mini study's
    (src / "studies" / "cifar10-mini" / "report.md").write_text("# results\n")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        str(src),
        "-w",
        str(tmp_path),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    if r.returncode and "No module named" in r.stderr:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("ettcli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"ettcli/studies/{p.name}" for p in (ROOT / "studies").glob("*.toml")}
    assert shipped and shipped <= names
    assert "ettcli/flops_table.json" in names
    assert not any(n.startswith("ettcli/studies/cifar10-mini/") for n in names)  # results stay in the repository
