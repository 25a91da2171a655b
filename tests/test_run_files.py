"""Run files are named by RunFolder alone: other modules read a run through it, never by file name."""

from __future__ import annotations

import ast

from conftest import ROOT

from ettcli import runs
from ettcli.runs import RunFolder

# (a study job's folder has a lock of its own, also named "lock": not a run file)
RUN_FILES = {runs.CONFIG, runs.METRICS, runs.CHECKPOINT, runs.SUMMARY, runs.FINAL, runs.REWIND}


def test_no_module_but_runs_spells_a_run_file_name():
    found = []
    for path in sorted((ROOT / "ettcli").rglob("*.py")):
        if path.name == "runs.py" and path.parent.name == "ettcli":
            continue
        if path.name == "hf.py" and path.parent.name == "ettcli":
            continue  # a Hugging Face model folder's config.json, not a run file
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in RUN_FILES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert found == []


def test_a_run_folder_read_back_gives_its_summary_config_and_metrics(tmp_path):
    identity = {"ticket": "0" * 64, "recipe": {"lr": 0.1, "batch_size": 128}, "seed": 0}
    run = RunFolder(tmp_path / "run", identity)
    run.begin(fresh=True, settings={"device": "cpu"})
    run.append_metrics({"epoch": 1, "test_accuracy": 0.5})
    run.write_json(runs.SUMMARY, {"final_test_accuracy": 0.5, "images_per_second": 123.0})
    read = RunFolder.reading(tmp_path / "run")
    assert read.config() == {"identity": identity, "settings": {"device": "cpu"}}
    assert read.summary()["images_per_second"] == 123.0
    assert read.metrics() == [{"epoch": 1, "test_accuracy": 0.5}]
