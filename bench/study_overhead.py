"""The study driver's own overhead per job, on a study of about 1,000 planned jobs.

    .venv/bin/python bench/study_overhead.py [--slots 2] [--launch 300]

The study is the shipped studies/cifar10-resnet.toml (5 sources, 5 targets, 10 transferred levels, 3 seeds),
its data root pointed at an empty temporary folder; where ett prune's methods are missing from this build it
has no baselines (995 jobs), otherwise about 2,000. Nothing trains. Measured, in this order:

1. ``ett study run --dry-run`` in a fresh interpreter: with an empty ``$ETT_CACHE`` (the paper's architectures'
   FLOPs come from the table shipped with ett, so no torch), again (warm), and for the same study at width 8,
   whose architectures are not in the table (torch is imported to count each one, once);
2. planning in process: ``load_study`` (every key checked, every transfer plan built) and ``plan_jobs``
   (every job and its identity hash);
3. writing every ``job.json`` (first run), and checking them again unchanged (every later run);
4. launching and collecting: the local executor runs ``--launch`` finished jobs again, ``--slots`` at a time:
   the job goes to a worker over its pipe, the worker reads its job.json, sees result.json and answers, and
   the driver's poll collects it: the whole per-job path of a launch without the job's own work (the workers
   themselves are started, one fork each, before the measurement);
5. a rerun of the finished study: ``run_study`` finds every job done (a stat per job), and rewrites
   results.jsonl from every result.json;
6. one ETA of the live view (``costs.Eta.seconds``: the jobs left scheduled over the slots); the view computes
   it at most every 5 s, so it is not a per-job cost.

Per job = (2 + 3 + 5) / jobs + 4 / launched. Goals: under 20 ms per job, and under 5 s for --dry-run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def study_file(tmp: Path, width: int | None = None) -> Path:
    from ettcli.study.spec import _methods

    text = (ROOT / "studies" / "cifar10-resnet.toml").read_text()
    if width:
        text = re.sub(r'"cifar_resnet_(\d+)"', rf'"cifar_resnet_\1_{width}"', text)
    text = re.sub(r"(?m)^data_root = .*$", f'data_root = "{tmp / "data"}"', text)
    if not _methods():
        text = re.sub(r"(?m)^methods = .*$", "methods = []", text)
        text = text.replace('like = "imp"', 'like = "transfers"')
    path = tmp / (f"study-{width}.toml" if width else "study.toml")
    path.write_text(text)
    (tmp / "data").mkdir(exist_ok=True)
    return path


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def dry_run(path: Path, out: Path, cache: Path) -> float:
    env = {**os.environ, "ETT_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ettcli", "study", "run", str(path), "--dry-run", "--out", str(out)],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def fake_results(root: Path, jobs) -> None:
    """A result.json per job, rows shaped as real ones, so the driver sees a finished study."""
    row = {"target": "cifar_resnet_20", "method": "ett", "level": 1, "seed": 0, "sparsity": 0.2,
           "final_test_accuracy": 0.9, "best_test_accuracy": 0.9, "train_flops": 1e15}  # fmt: skip
    for key, job in jobs.items():
        rows = [row] if job.kind in ("train", "dense", "imp") else []
        (root / "jobs" / key / "result.json").write_text(json.dumps({"key": key, "kind": job.kind, "rows": rows}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slots", type=int, default=2, help="concurrent job processes in the launch test")
    ap.add_argument("--launch", type=int, default=300, help="finished jobs launched again in the launch test")
    args = ap.parse_args()

    from ettcli.study.driver import run_study, write_jobs
    from ettcli.study.executors import LocalExecutor
    from ettcli.study.graph import plan_jobs
    from ettcli.study.spec import load_study

    with tempfile.TemporaryDirectory(prefix="ett-bench-study-") as t:
        tmp = Path(t)
        path = study_file(tmp)
        cold = dry_run(path, tmp / "dry", tmp / "cache-cold")
        warm = dry_run(path, tmp / "dry", tmp / "cache-cold")
        other = dry_run(study_file(tmp, width=8), tmp / "dry8", tmp / "cache-other")
        _, t_torch = timed(lambda: subprocess.run([sys.executable, "-c", "import torch"], check=True))

        os.environ["ETT_CACHE"] = str(tmp / "cache-cold")
        root = tmp / "out"
        study, t_load = timed(lambda: load_study(path, root))
        jobs, t_plan = timed(lambda: plan_jobs(study))
        n = len(jobs)
        _, t_write = timed(lambda: write_jobs(study, root, jobs))
        _, t_rewrite = timed(lambda: write_jobs(study, root, jobs))
        fake_results(root, jobs)

        ex = LocalExecutor(root, args.slots, device="cpu")
        keys = [k for k, j in jobs.items() if not j.light][: args.launch]
        ex.submit(keys[:1])  # start the fork server (imports torch once) outside the measurement
        while not ex.poll():
            time.sleep(0.01)
        pending, collected = list(keys[1:]), 0
        t0 = time.perf_counter()
        while collected < len(keys) - 1:
            free = ex.free()
            if free and pending:
                ex.submit(pending[:free])
                del pending[:free]
            got = ex.poll()
            collected += len(got)
            if not got:
                time.sleep(0.002)
        t_launch = (time.perf_counter() - t0) / (len(keys) - 1)
        ex.stop()

        outcome, t_rerun = timed(lambda: run_study(study, root, LocalExecutor(root, args.slots, device="cpu")))
        assert outcome.counts.before == n

        from ettcli.study.costs import Eta

        eta = Eta(study, tmp / "fresh", jobs, args.slots, 1)  # a study with nothing done yet
        eta.calibrated = {j.cost["arch"]: 1000.0 for j in jobs.values() if j.cost}
        _, t_eta = timed(lambda: [eta.seconds() for _ in range(5)])
        t_eta /= 5

    per_job = (t_load + t_plan + t_write + t_rerun) / n + t_launch
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}"
    )
    print(f"study: {n} jobs ({sum(not j.light for j in jobs.values())} through the executor)")
    print(f"--dry-run, fresh interpreter: {cold:.2f} s with an empty cache (shipped FLOPs table), {warm:.2f} s warm, "
          f"{other:.2f} s for width-8 networks counted here (python -c 'import torch' alone: {t_torch:.2f} s)")  # fmt: skip
    print(f"load + check the study file: {1e3 * t_load:.0f} ms ({1e3 * t_load / n:.3f} ms/job)")
    print(f"plan jobs and hash identities: {1e3 * t_plan:.0f} ms ({1e3 * t_plan / n:.3f} ms/job)")
    print(f"write job files: {1e3 * t_write:.0f} ms first ({1e3 * t_write / n:.3f} ms/job), "
          f"{1e3 * t_rewrite:.0f} ms unchanged ({1e3 * t_rewrite / n:.3f} ms/job)")  # fmt: skip
    print(f"launch + collect through the local executor ({args.slots} at a time): {1e3 * t_launch:.2f} ms/job")
    print(
        f"rerun of the finished study (status, results.jsonl): {1e3 * t_rerun:.0f} ms ({1e3 * t_rerun / n:.3f} ms/job)"
    )
    print(f"one ETA of the live view (every job left scheduled): {1e3 * t_eta:.1f} ms")
    print(
        f"driver overhead per job: {1e3 * per_job:.2f} ms (goal < 20 ms); --dry-run {cold:.2f} s on a new machine (goal < 5 s)"
    )


if __name__ == "__main__":
    main()
