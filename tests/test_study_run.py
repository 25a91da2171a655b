"""`ett study run` end to end on a tiny real study: a width-4 ResNet-14 source, a ResNet-20 target, 1 epoch on
300 CIFAR-10 images. Killing the driver, adding a seed, two drivers on one folder, a failing job, submitit's
local executor, --emit, and the report and plot recomputed from results.jsonl."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from train_util import cifar_subset, needs_cifar

from ettcli.study.graph import plan_jobs
from ettcli.study.spec import load_study

pytestmark = [needs_cifar, pytest.mark.data]
HAVE_METHODS = hasattr(__import__("ettcli.pruning", fromlist=["x"]), "METHODS")
METHODS = '["magnitude"]' if HAVE_METHODS else "[]"


def study_text(data_root: Path, seeds=(0,), methods: str = METHODS, extra: str = "", levels=(1, 2)) -> str:
    return f"""\
name = "tiny"
dataset = "cifar10"
data_root = "{data_root}"
seeds = {list(seeds)}
sources = ["cifar_resnet_14_4"]
targets = ["resnet-20"]

[train]
epochs = 1
batch_size = 50

[imp]
levels = {max(levels)}
rewind = "2it"

[transfer]
levels = {list(levels)}
stretch = ["append"]

[baselines]
methods = {methods}
{extra}"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ETT_CACHE", str(base / "cache"))
        mp.setenv("OMP_NUM_THREADS", "1")
        root = cifar_subset(tmp_path_factory.getbasetemp())
        yield {"base": base, "root": root}


def driver(path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ettcli", "study", "run", str(path), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def attempts(out: Path) -> dict[str, list[dict]]:
    found = {}
    for f in (out / "jobs").glob("*/attempts.jsonl"):
        found[f.parent.name] = [json.loads(x) for x in f.read_text().splitlines()]
    return found


def done_jobs(out: Path) -> set[str]:
    return {p.parent.name for p in (out / "jobs").glob("*/result.json")}


def starts(events: list[dict], after: float = 0.0) -> int:
    return sum(1 for e in events if e["event"] == "start" and e["time"] >= after)


@pytest.fixture(scope="module")
def killed(env):
    """The tiny study: a driver killed (SIGTERM) after two jobs, then run again to the end."""
    from typer.testing import CliRunner

    from ettcli.cli import app

    path = env["base"] / "tiny.toml"
    path.write_text(study_text(env["root"]))
    out = env["base"] / "tiny"
    p = driver(path, "--jobs", "1")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None and len(done_jobs(out) if out.exists() else ()) < 2:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    before = done_jobs(out)
    rerun_at = time.time()
    r = CliRunner().invoke(app, ["study", "run", str(path), "--jobs", "2"])
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return {"path": path, "out": out, "rc": p.returncode, "err": err, "before": before, "rerun_at": rerun_at}


def test_a_killed_driver_reruns_only_what_is_missing(killed):
    out = killed["out"]
    assert killed["rc"] == 128 + signal.SIGTERM, killed["err"]
    assert "interrupted by SIGTERM" in killed["err"] and "rerun the same command" in killed["err"]
    jobs = plan_jobs(load_study(killed["path"]))
    assert done_jobs(out) == set(jobs)
    before = killed["before"]
    assert 2 <= len(before) < len(jobs)
    seen = attempts(out)
    ran_again = {k for k, ev in seen.items() if starts(ev, killed["rerun_at"])}
    assert ran_again == set(jobs) - before  # the rerun ran exactly the jobs that were not finished
    for key in before:
        assert starts(seen[key]) == 1 and not starts(seen[key], killed["rerun_at"])
    for key in set(jobs) - before:  # a job stopped by the kill is noted as interrupted and finished once
        assert [e["event"] for e in seen[key]].count("done") == 1


@pytest.fixture(scope="module")
def two_seeds(killed):
    """A seed added to the file, then two drivers started at once on the same folder."""
    from typer.testing import CliRunner

    from ettcli.cli import app

    path = killed["path"]
    old = set(plan_jobs(load_study(path)))
    path.write_text(study_text(load_study(path).data_root, seeds=(0, 1)))
    new = set(plan_jobs(load_study(path))) - old
    t0 = time.time()
    other = driver(path, "--jobs", "1")  # a second driver in another process, on the same folder at once
    mine = CliRunner().invoke(app, ["study", "run", str(path), "--jobs", "1"])
    _, err = other.communicate(timeout=600)
    return {**killed, "old": old, "new": new, "t0": t0, "other": (other.returncode, err), "mine": mine}


def test_adding_a_seed_runs_only_new_jobs_and_two_drivers_never_run_one_job_twice(two_seeds):
    out = two_seeds["out"]
    assert two_seeds["other"][0] == 0, two_seeds["other"][1]
    mine = two_seeds["mine"]
    assert mine.exit_code == 0, (mine.stdout, mine.stderr)
    new, old = two_seeds["new"], two_seeds["old"]
    jobs = plan_jobs(load_study(two_seeds["path"]))
    assert new and {jobs[k].kind for k in new} <= {"train", "dense"}
    assert all(jobs[k].row["seed"] == 1 for k in new)
    assert done_jobs(out) == set(jobs)
    seen = attempts(out)
    for key in new:
        assert starts(seen[key]) == 1, (key, seen[key])  # one start in all, whichever driver got it
    for key in old:
        assert not starts(seen[key], two_seeds["t0"]), key


def test_report_numbers_are_recomputed_from_results(two_seeds, cli):
    out = two_seeds["out"]
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    jobs = plan_jobs(load_study(two_seeds["path"]))
    assert {r["job"] for r in rows} == {k for k, j in jobs.items() if j.kind in ("imp", "train", "dense")}
    r = cli("study", "report", out)
    assert r.exit_code == 0, r.stderr
    report = (out / "report.md").read_text()
    assert report.strip() == r.stdout.strip()
    target = "cifar_resnet_20_4"

    def accs(method, level=None):
        return [
            100 * x["final_test_accuracy"]
            for x in rows
            if x["target"] == target and x["method"] == method and (level is None or x["level"] == level)
        ]

    dense = accs("dense")
    assert len(dense) == 2
    assert f"Dense: {statistics.mean(dense):.2f} ± {statistics.stdev(dense):.2f} (2)" in report
    for level in (1, 2):
        ett = accs("ett", level)
        cell = f"{statistics.mean(ett):.2f} ± {statistics.stdev(ett):.2f} (2)"
        line = next(x for x in report.splitlines() if x.startswith("| ETT <- 14 |"))
        assert line.split("|")[level + 1].strip() == cell
        drops = [x for x in report.splitlines() if x.startswith("| ETT <- 14 |")][2]
        assert drops.split("|")[level + 1].strip() == f"{statistics.mean(ett) - statistics.mean(dense):+.2f}"
        sparsity = [100 * x["sparsity"] for x in rows if x["method"] == "ett" and x["level"] == level]
        assert f"level {level} ({statistics.mean(sparsity):.2f}%)" in report
    imp_flops = sum(x["train_flops"] for x in rows if x["target"] == "cifar_resnet_14_4" and x["method"] == "imp")
    ref = statistics.mean(x["train_flops"] for x in rows if x["method"] == "dense")
    line = next(x for x in report.splitlines() if x.startswith("| IMP on cifar_resnet_14_4, levels 0-2 |"))
    assert line.endswith(f"| {imp_flops / ref:.3f}x |"), line
    if HAVE_METHODS:
        mag = accs("magnitude", 2)
        line = next(x for x in report.splitlines() if x.startswith("| magnitude |"))
        assert line.split("|")[3].strip() == f"{statistics.mean(mag):.2f} ± {statistics.stdev(mag):.2f} (2)"


def test_plot_writes_a_figure(two_seeds, cli, tmp_path):
    for name in ("fig.png", "fig.svg"):
        r = cli("study", "plot", two_seeds["out"], "-o", tmp_path / name)
        assert r.exit_code == 0, r.stderr
        assert (tmp_path / name).stat().st_size > 5000
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"ETT" in (tmp_path / "fig.svg").read_bytes()


LMC_SECTION = """
[lmc]
methods = {methods}
levels = [2]
alphas = 3
bn_batches = 2
train_images = 100
"""


@pytest.fixture(scope="module")
def with_lmc(two_seeds):
    """An [lmc] section added to the finished two-seed study, then run again."""
    from typer.testing import CliRunner

    from ettcli.cli import app

    path = two_seeds["path"]
    old = set(plan_jobs(load_study(path)))
    methods = '["ett", "magnitude"]' if HAVE_METHODS else '["ett"]'
    path.write_text(path.read_text() + LMC_SECTION.format(methods=methods))
    t0 = time.time()
    r = CliRunner().invoke(app, ["study", "run", str(path), "--jobs", "2"])
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return {**two_seeds, "old_plan": old, "t_lmc": t0}


def test_an_lmc_section_adds_only_lmc_jobs_and_the_report_its_instability(with_lmc, cli):
    from ettcli.lmc import instability

    out, path = with_lmc["out"], with_lmc["path"]
    jobs = plan_jobs(load_study(path))
    new = set(jobs) - with_lmc["old_plan"]
    assert new and {jobs[k].kind for k in new} == {"lmc"}
    assert with_lmc["old_plan"] <= set(jobs)  # every earlier job keeps its key
    seen = attempts(out)
    assert {k for k, ev in seen.items() if starts(ev, with_lmc["t_lmc"])} == new  # nothing else trained again
    rows = [json.loads(x) for x in (out / "lmc.jsonl").read_text().splitlines()]
    assert {r["job"] for r in rows} == new
    assert {r["method"] for r in rows} == ({"ett", "magnitude"} if HAVE_METHODS else {"ett"})
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert not {r["job"] for r in results} & new  # the trainings' table is unchanged
    for row in rows:
        job = jobs[row["job"]]
        record = json.loads((out / row["lmc"]).read_text())
        # the path joins this ticket's own trainings with seeds 0 and 1
        pair = [jobs[d] for d in job.deps]
        assert [p.row["seed"] for p in pair] == [0, 1] and {p.spec["ticket"] for p in pair} == {pair[0].spec["ticket"]}
        assert [Path(t).resolve() for t in record["tickets"]] == [
            (out / p.folder() / "run" / "final.safetensors").resolve() for p in pair
        ]
        assert record["settings"]["train_images"] == 100 and len(record["alphas"]) == 3
        assert row["instability"] == pytest.approx(instability(record["test"]["error"]))
    r = cli("study", "report", out)
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    at = lines.index("### Instability (linear mode connectivity), percentage points")
    ett = next(x for x in lines[at:] if x.startswith("| ETT <- 14 |"))
    value = next(x["instability"] for x in rows if x["method"] == "ett")
    assert ett.split("|")[2].strip() == "-" and ett.split("|")[3].strip() == f"{value:.2f} (1)"


def test_a_damaged_or_missing_result_runs_its_job_again_and_no_row_is_lost(with_lmc, cli):
    out, path = with_lmc["out"], with_lmc["path"]
    jobs = plan_jobs(load_study(path))
    rows = sorted((out / "results.jsonl").read_text().splitlines())
    trains = [k for k, j in jobs.items() if j.kind == "train"]
    damaged, missing = trains[0], trains[-1]
    (out / "jobs" / damaged / "result.json").write_text('{"key": ')  # cut short
    (out / "jobs" / missing / "result.json").unlink()
    t0 = time.time()
    r = cli("study", "run", path, "--jobs", "2")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert f"{len(jobs)} of {len(jobs)} jobs done ({len(jobs) - 2} before this run)" in r.stdout
    assert {k for k, ev in attempts(out).items() if starts(ev, t0)} == {damaged, missing}
    assert sorted((out / "results.jsonl").read_text().splitlines()) == rows  # every row back, none twice
    assert json.loads((out / "jobs" / damaged / "result.json").read_text())["key"] == damaged


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_a_killed_driver_takes_its_workers_and_their_server_with_it(env):
    path = env["base"] / "long.toml"
    path.write_text(study_text(env["root"], methods="[]", levels=(1,)).replace("epochs = 1", "epochs = 400"))
    out = env["base"] / "long"
    p = driver(path, "--jobs", "2")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not [m for m in out.glob("imp/*/level_00/metrics.jsonl") if m.read_text()]:
        time.sleep(0.2)  # until IMP's first training is in its epochs
    started = [e for ev in attempts(out).values() for e in ev if e["event"] == "start"]
    assert started, p.communicate(timeout=60)
    workers = {e["pid"] for e in started}
    helpers = _children(p.pid)  # the fork server (the workers' parent) and multiprocessing's resource tracker
    assert helpers
    p.kill()  # SIGKILL: the driver cannot stop anything itself
    p.communicate(timeout=60)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and any(_alive(x) for x in workers | helpers):
        time.sleep(0.5)
    assert not [x for x in workers | helpers if _alive(x)]
    imp = next(ev for key, ev in attempts(out).items() if key.startswith("imp-"))
    assert [e["event"] for e in imp][-1] == "interrupted", imp  # stopped at a checkpoint, not left to run on


def test_a_failing_job_is_reported_others_finish_and_emit_then_lists_it(env, cli):
    path = env["base"] / "fail.toml"
    path.write_text(study_text(env["root"], methods="[]", levels=(1,)))
    jobs = plan_jobs(load_study(path))
    out = env["base"] / "fail"
    dense = next(k for k, j in jobs.items() if j.kind == "dense")
    run = out / "jobs" / dense / "run"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"identity": {"something": "else"}}')  # a folder holding another run
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')  # that reached an epoch: it is not taken over
    r = cli("study", "run", path, "--jobs", "2")
    assert r.exit_code == 1
    log = out / "jobs" / dense / "log.txt"
    line = next(x for x in r.stderr.splitlines() if x.startswith(f"failed: {dense}: "))
    assert "holds a run with different settings" in line and line.endswith(f"(log: {log})"), line  # the reason
    assert "ett: error:" in log.read_text() and "holds a run with different settings" in log.read_text()
    assert done_jobs(out) == set(jobs) - {dense}
    assert f"failed {dense}" in (out / "study.log").read_text()

    # --emit lists what is ready and not done: the failed job; `ett study job` runs it once its folder is fixed
    r = cli("study", "run", path, "--emit")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == [f"ett study job {out} {dense}"]
    (run / "config.json").unlink()
    (run / "metrics.jsonl").unlink()
    r = cli("study", "job", out, dense)
    assert r.exit_code == 0, r.stderr
    assert done_jobs(out) == set(jobs)
    assert cli("study", "run", path, "--emit").stdout == ""
    assert "already done" in cli("study", "job", out, dense).stdout


def test_submitit_local_executor_runs_the_study(env, cli):
    pytest.importorskip("submitit")
    path = env["base"] / "slurm.toml"
    text = study_text(env["root"], methods="[]", levels=(1,)).replace("seeds = [0]", "seeds = [0]\ndense = false")
    path.write_text(text + '\n[slurm]\ncluster = "local"\ntime = 10\n')
    r = cli("study", "run", path, "--executor", "slurm")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    out = env["base"] / "slurm"
    jobs = plan_jobs(load_study(path))
    assert done_jobs(out) == set(jobs)
    assert list((out / "slurm").glob("*/*_result.pkl"))  # submitit ran them
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"imp", "ett"}
