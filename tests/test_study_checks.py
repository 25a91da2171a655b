"""What `ett study` checks before it runs anything, and what it says when it cannot: a rewind step past the end
of training, data that is not there, a job whose inputs are not done, a finished study, a study file where a
folder is expected (and the reverse), and folders that cannot be written (`ett lmc --pair` and `ett prune`
too: before any work)."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ROOT, assert_user_error, make_ticket
from test_outputs import _in_small_filesystem
from test_study_run import study_text
from train_util import cifar_subset, needs_cifar

from ettcli.study.graph import plan_jobs
from ettcli.study.spec import load_study

pytestmark = [needs_cifar, pytest.mark.data]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return cifar_subset(tmp_path_factory.getbasetemp())


def test_a_rewind_step_past_the_end_of_training_fails_the_dry_run(root, cli, tmp_path):
    text = (
        study_text(root)
        .replace('rewind = "2it"', 'rewind = "1000it"')
        .replace("batch_size = 50", "batch_size = 50\nsubset = 500")
    )
    path = tmp_path / "late.toml"
    path.write_text(text)
    r = cli("study", "run", path, "--dry-run")
    assert_user_error(r, "rewind step 1000it (1000 iterations", "1 epoch(s) of 10", "500 images (train.subset)")
    assert_user_error(cli("study", "run", path), "rewind step 1000it")
    assert not (tmp_path / "late").exists()


def test_missing_data_is_a_warning_in_the_dry_run_and_refused_by_the_run(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("ETT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/ett/data here
    text = "\n".join(line for line in study_text(tmp_path).splitlines() if not line.startswith("data_root"))
    path = tmp_path / "nodata.toml"
    path.write_text(text)
    r = cli("study", "run", path, "--dry-run")
    assert r.exit_code == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if line.startswith("ett: warning:")]
    assert len(warning) == 1 and "no 'data_root' in the file and $ETT_DATA is not set" in warning[0], r.stderr
    assert_user_error(cli("study", "run", path), "no 'data_root' in the file", "set data_root")
    assert_user_error(cli("study", "run", path, "--emit"), "no 'data_root' in the file")
    assert not (tmp_path / "nodata").exists()  # nothing planned into a folder, no job ran


def test_a_job_waiting_on_another_names_it_and_records_no_attempt(root, cli, tmp_path):
    path = tmp_path / "w.toml"
    path.write_text(study_text(root, methods="[]", levels=(1,)))
    out = tmp_path / "w"
    assert cli("study", "run", path, "--emit").exit_code == 0
    jobs = plan_jobs(load_study(path))
    train = next(k for k, j in jobs.items() if j.kind == "train")
    dep = jobs[train].deps[0]
    r = cli("study", "job", out, train)
    assert_user_error(r, f"job {train} waits on job {dep} ({jobs[dep].kind})", f"ett study job {out} {dep}")
    assert not (out / "jobs" / train / "attempts.jsonl").exists()


def test_emit_on_a_finished_study_says_so(root, cli, tmp_path):
    path = tmp_path / "f.toml"
    path.write_text(study_text(root, methods="[]", levels=(1,)))
    out = tmp_path / "f"
    assert cli("study", "run", path, "--emit").exit_code == 0
    jobs = plan_jobs(load_study(path))
    for key in jobs:  # what the driver counts as done
        (out / "jobs" / key / "result.json").write_text(json.dumps({"key": key, "rows": []}))
    r = cli("study", "run", path, "--emit")
    assert r.exit_code == 0 and r.stdout == ""
    assert f"all {len(jobs)} jobs of the study in {out} are done; nothing to run" in r.stderr


def test_report_and_plot_take_the_study_file_and_run_names_a_folder(cli, tmp_path):
    shutil.copy(ROOT / "studies" / "cifar10-mini.toml", tmp_path / "mini.toml")
    folder = tmp_path / "mini"  # the file's default output folder
    assert_user_error(cli("study", "report", tmp_path / "mini.toml"), "folder", "does not exist yet", "ett study run")
    folder.mkdir()
    shutil.copy(ROOT / "studies" / "cifar10-mini" / "results.jsonl", folder)
    r = cli("study", "report", tmp_path / "mini.toml")
    assert r.exit_code == 0, r.stderr
    assert (folder / "report.md").is_file()
    shutil.copy(tmp_path / "mini.toml", folder / "study.toml")
    assert_user_error(cli("study", "run", folder), f"{folder} is a folder; give the study file", "study.toml")


def test_read_only_folders_are_one_line_each_and_nothing_is_measured(root, tmp_path):
    shutil.copy(ROOT / "studies" / "cifar10-mini.toml", tmp_path / "mini.toml")
    (tmp_path / "tiny.toml").write_text(study_text(root, methods="[]", levels=(1,)))
    a = tmp_path / "a.safetensors"
    make_ticket("cifar_resnet_8_4", 0.5, seed=0).save(a)
    ticket_a = make_ticket("cifar_resnet_8_4", 0.5, seed=0)
    make_ticket("cifar_resnet_8_4", 0.0, seed=3).with_masks(ticket_a.masks).save(tmp_path / "b.safetensors")
    ett = '"$PY" -m ettcli'
    script = f"""
mkdir "$D/mini" && cp {ROOT}/studies/cifar10-mini/results.jsonl "$D/mini/" && cp {tmp_path}/mini.toml "$D/"
mount -o remount,ro "$D" || exit 99
export ETT_DATA={root} ETT_CACHE={tmp_path}/cache ETT_RUNS={tmp_path}/runs
{ett} study run {tmp_path}/tiny.toml --out "$D/new"; echo "rc=$?"
{ett} study plot "$D/mini"; echo "rc=$?"
{ett} study run "$D/mini.toml"; echo "rc=$?"
{ett} lmc --pair {a} {tmp_path}/b.safetensors --data-root {root} --alphas 3 --bn-batches 1 --out "$D/lmc"; echo "rc=$?"
"""
    r = _in_small_filesystem(tmp_path, script, "rw")
    assert r.stdout.split() == ["rc=2"] * 4, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 4 and all(x.startswith("ett: error: ") for x in lines), r.stderr
    assert "Traceback" not in r.stderr and "alpha" not in r.stderr  # nothing was evaluated
    for line in lines:
        assert "cannot write in" in line and "Read-only file system" in line, line


def test_prune_checks_its_output_before_scoring(cli, ticket_file, monkeypatch):
    import ettcli.pruning as pruning

    scored = []
    monkeypatch.setattr(pruning, "prune_run", lambda *a, **k: scored.append(a))
    r = cli("prune", "magnitude", ticket_file(), "--sparsity", "0.6", "-o", "/proc/ett-out.safetensors")
    assert_user_error(r, "/proc/ett-out.safetensors: cannot write in /proc", "choose a folder you can write to")
    assert not scored
