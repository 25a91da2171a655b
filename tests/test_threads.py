"""CPU threads: never more than the CPUs a process may use (training, scoring, LMC, the study executors), and a
study job whose process dies from a signal reported with its exit status and its log's last line, then rerun."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from conftest import ROOT
from train_util import cifar_subset, needs_cifar

from ettcli.cpus import cgroup_cpu_limit, threads_for, usable_cpus
from ettcli.errors import EttWarning
from ettcli.study.executors import LocalExecutor, SubmititExecutor, cores, threads_per_job

CPUS = usable_cpus()


def test_cgroup_quota_is_read_in_both_layouts(tmp_path):
    v2 = tmp_path / "v2"
    (v2 / "job").mkdir(parents=True)
    (v2 / "job" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2, [("", "/job")]) == 1.5
    (v2 / "job" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2, [("", "/job")]) is None
    v1 = tmp_path / "v1" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    assert cgroup_cpu_limit(tmp_path / "v1", [("cpu,cpuacct", "/")]) == 0.5
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "v1", [("cpu,cpuacct", "/")]) is None
    assert cgroup_cpu_limit(tmp_path / "nothing", [("", "/")]) is None


def test_usable_cpus_follows_the_affinity():
    assert usable_cpus() <= len(os.sched_getaffinity(0))


def test_more_threads_than_cpus_are_clamped_with_a_warning(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert threads_for(CPUS * 4) == CPUS
        assert threads_for(1) == 1
        assert threads_for(None) == CPUS
    assert len(seen) == 1 and issubclass(seen[0].category, EttWarning)
    assert f"--threads {CPUS * 4} is more than the {CPUS} CPU(s)" in str(seen[0].message)
    monkeypatch.setenv("OMP_NUM_THREADS", str(CPUS + 1))
    with pytest.warns(EttWarning, match=f"OMP_NUM_THREADS {CPUS + 1} is more than"):
        assert threads_for(None) == CPUS
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_for(None) == 1


def test_scoring_lowers_torch_threads_above_the_cpus(ticket_file):
    """snip/grasp/synflow compute with torch's own thread count (OMP_NUM_THREADS, torch.set_num_threads)."""
    import torch

    from ettcli.pruning import prune

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(CPUS * 4)
        with pytest.warns(EttWarning, match=f"torch's thread count .* {CPUS * 4} is more than the {CPUS} CPU"):
            out = prune(ticket_file("cifar_resnet_8_4"), "synflow", sparsity=0.5)
        assert torch.get_num_threads() == CPUS
        assert 0.49 < out.sparsity() < 0.51
    finally:
        torch.set_num_threads(before)


def test_executor_thread_arithmetic(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_job(4, cpus=2) == 1
    assert threads_per_job(2, cpus=16) == 8
    assert threads_per_job(1, cpus=16, requested=8) == 8
    assert threads_per_job(1, cpus=2, requested=8) == 2
    assert threads_per_job(3, cpus=16, requested=None) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads_per_job(1, cpus=16) == 2
    monkeypatch.delenv("OMP_NUM_THREADS")

    n = cores()
    for jobs in range(1, n + 3):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ex = LocalExecutor(tmp_path, jobs, device="cpu")
        assert ex.slots * ex.threads <= n, (jobs, ex.slots, ex.threads)
        assert ex.slots == min(jobs, n) and ex.threads == n // ex.slots
        assert bool(seen) == (jobs > n)

    pytest.importorskip("submitit")
    # the shipped studies' [slurm] cpus = 8 on submitit's local cluster: split this machine, never 8 each
    with pytest.warns(EttWarning, match="cpus = 8 is more than a job may use") if n < 8 else warnings.catch_warnings():
        ex = SubmititExecutor(tmp_path, {"cluster": "local", "cpus": 8}, "t")
    assert ex.slots * ex.threads <= n and ex.threads <= 8 and ex.free() == ex.slots
    ex = SubmititExecutor(tmp_path, {"cluster": "local", "cpus": 1, "array_parallelism": 1}, "t")
    assert (ex.slots, ex.threads) == (1, 1)
    ex = SubmititExecutor(tmp_path, {"cluster": "local"}, "t")
    assert ex.slots == n and ex.threads == 1


def _tiny_ticket(path: Path) -> Path:
    from ettcli.arch import parse_arch
    from ettcli.models import init_ticket

    init_ticket(parse_arch("cifar_resnet_20_4"), seed=0).save(path)
    return path


@needs_cifar
@pytest.mark.data
def test_training_with_more_threads_than_cores_finishes(tmp_path_factory, tmp_path):
    """On a 2-core machine 8 threads crashed this very training (free(): invalid next size); now it is
    clamped, warned about, and finishes. Run in a process of its own: a native crash would end pytest."""
    data = cifar_subset(tmp_path_factory.getbasetemp())
    ticket = _tiny_ticket(tmp_path / "r20w4.safetensors")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ETT_CACHE": str(tmp_path / "cache"), "ETT_RUNS": str(tmp_path)}
    env.pop("OMP_NUM_THREADS", None)
    threads = 4 * CPUS
    cmd = [sys.executable, "-m", "ettcli", "train", str(ticket), "--data-root", str(data), "--epochs", "1",
           "--batch-size", "64", "--threads", str(threads)]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    warning = [x for x in r.stderr.splitlines() if "warning" in x and "--threads" in x]
    assert warning == [
        f"ett: warning: --threads {threads} is more than the {CPUS} CPU(s) this process may use; running {CPUS} "
        "thread(s) (more threads than CPUs is never faster here and can crash torch's CPU kernels)"
    ]
    assert f"cpu ({CPUS} threads)" in r.stdout + r.stderr


STUDY = """\
name = "crash"
dataset = "cifar10"
data_root = "{root}"
seeds = [0]
sources = ["cifar_resnet_14_4"]
targets = ["resnet-20"]
dense = false

[train]
epochs = 1
batch_size = 50

[imp]
levels = 1
rewind = "2it"

[transfer]
levels = [1]
stretch = ["append"]
"""


def test_fault_dump_names_the_signal_when_no_exit_status_is_known(tmp_path):
    """What submitit leaves: the job's process crashed (abort) inside its logging; only its log tells."""
    from ettcli.study.runner import LOG, died, ended_unseen, job_folder

    folder = job_folder(tmp_path, "k")
    folder.mkdir(parents=True)
    (folder / "attempts.jsonl").write_text('{"event": "start"}\n')
    code = (
        "import os, sys\nfrom pathlib import Path\nfrom ettcli.study.runner import _logging_to\n"
        f"with _logging_to(Path({str(folder / LOG)!r})):\n"
        "    print('step 3 of 4', flush=True)\n"
        "    print('free(): invalid next size (normal)', file=sys.stderr, flush=True)\n"
        "    os.abort()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == -6
    assert ended_unseen(tmp_path, "k")
    detail = died(tmp_path, "k")
    assert detail.startswith('its process died: killed by SIGABRT (exit status 134); its log ends: "free(): invalid')
    assert detail.endswith(f"log: {folder / LOG}")


@needs_cifar
@pytest.mark.data
def test_a_job_killed_by_a_signal_is_reported_and_rerun(tmp_path_factory, tmp_path, monkeypatch):
    from ettcli.study.driver import run_study
    from ettcli.study.runner import LOG, RESULT, job_folder
    from ettcli.study.spec import load_study

    data = cifar_subset(tmp_path_factory.getbasetemp())
    monkeypatch.setenv("ETT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = tmp_path / "crash.toml"
    path.write_text(STUDY.format(root=data))
    study = load_study(path)
    out = tmp_path / "crash"
    ex = LocalExecutor(out, 1, device="cpu")
    killed: list[str] = []

    def on_event(event, counts):  # the first heavy job: once it has begun its log, abort its process
        if event.kind != "started" or killed:
            return
        log = job_folder(out, event.job.key) / LOG
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (log.exists() and log.read_text().startswith("==")):
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(ex.workers[0][0].pid, 6)
        killed.append(event.job.key)

    first = run_study(study, out, ex, on_event=on_event)
    assert killed and [k for k, _ in first.failed] == killed
    key = killed[0]
    lines = [x.strip() for x in (job_folder(out, key) / LOG).read_text().splitlines() if x.strip()]
    last = lines[: next(i for i, x in enumerate(lines) if x.startswith("Fatal Python error"))][-1]
    detail = first.failed[0][1]
    assert detail.startswith(f'its process died: killed by SIGABRT (exit status 134); its log ends: "{last[:200]}"')
    assert f"{key}" in (out / "study.log").read_text() and "killed by SIGABRT" in (out / "study.log").read_text()
    assert not (job_folder(out, key) / RESULT).exists()

    again = run_study(study, out, LocalExecutor(out, 1, device="cpu"))  # the rerun runs it again, to the end
    assert again.failed == [] and again.counts.done == again.counts.total
    assert (job_folder(out, key) / RESULT).is_file()


@needs_cifar
@pytest.mark.data
@pytest.mark.skipif(CPUS < 2, reason="needs 2 CPUs: one thread divides every batch")
def test_a_short_last_batch_that_the_threads_do_not_divide_trains(tmp_path_factory, tmp_path):
    """torch's CPU backward of channels_last convolutions crashed on a batch the threads do not divide (2
    threads, 75 images at batch 64: a last batch of 11). Now that step runs on the threads that divide it."""
    data = cifar_subset(tmp_path_factory.getbasetemp())
    ticket = _tiny_ticket(tmp_path / "r20w4.safetensors")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ETT_CACHE": str(tmp_path / "cache"), "ETT_RUNS": str(tmp_path)}
    env.pop("OMP_NUM_THREADS", None)
    cmd = [sys.executable, "-m", "ettcli", "train", str(ticket), "--data-root", str(data), "--epochs", "2",
           "--batch-size", "64", "--subset", "75", "--threads", "2"]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "cpu (2 threads)" in r.stdout + r.stderr
