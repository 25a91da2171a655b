"""The study driver: writes the planned jobs into the study folder and runs the missing ones.

``DIR`` layout::

    study.toml        the study file as last run
    jobs/<key>/       one folder per job (job.json, lock, attempts.jsonl, log.txt, result.json, run/, ...)
    imp/<id>/         IMP folders (level_NN/ with ticket.safetensors and the level's run)
    results.jsonl     one row per trained ticket, rewritten from the finished jobs' results
    lmc.jsonl         one row per LMC measurement (studies with an [lmc] section)
    study.log         one line per job that finished or failed

A job whose ``result.json`` holds its result is done and never runs again (a damaged or missing one makes it
run again, which rebuilds the result from its finished run); a job whose lock a live process holds
(another driver, a Slurm task) is waited for; a failed job is reported and only the jobs that depend on it
are skipped. Light jobs (transfers) run here in the driver; the rest go to the executor.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ettcli.errors import EttError
from ettcli.locks import JobLock
from ettcli.study.graph import Job, describe, plan_jobs
from ettcli.study.runner import JOB, LOCK, is_finished, job_folder, read_result, run_job
from ettcli.study.spec import Study

RESULTS = "results.jsonl"
LMC_RESULTS = "lmc.jsonl"
STUDY_LOG = "study.log"
STUDY_COPY = "study.toml"


@dataclass
class Event:
    """Something that happened to a job, for the progress view and the log."""

    kind: str  # "started", "done", "failed", "busy", "blocked", "interrupted"
    job: Job
    detail: str | None = None
    seconds: float | None = None


class StudyInterrupted(KeyboardInterrupt):
    """The driver was stopped by a signal; the jobs it had running either ``finished`` (their results are kept)
    or were ``stopped`` at a checkpoint."""

    def __init__(self, signum: int, finished: list[str], stopped: list[str]):
        super().__init__(signum)
        self.signum, self.finished, self.stopped = signum, finished, stopped


@dataclass
class Counts:
    total: int = 0
    done: int = 0  # finished now or before
    before: int = 0  # of those, finished before this run
    running: int = 0
    elsewhere: int = 0  # held by another process
    failed: int = 0
    blocked: int = 0  # waiting on a failed job

    @property
    def left(self) -> int:
        return self.total - self.done - self.running - self.failed - self.blocked - self.elsewhere


@dataclass
class Outcome:
    counts: Counts
    failed: list[tuple[str, str | None]] = field(default_factory=list)  # (key, log)
    rows: int = 0
    results: Path | None = None


def check_rewinds(study: Study, jobs: dict[str, Job]) -> None:
    """Refuse a rewind step that lies at or past the end of the study's training: every IMP level after the
    first and every target's rewind run would fail on it."""
    from ettcli.steps import parse_step
    from ettcli.study.graph import schedule

    sched = schedule(study)
    per_epoch, total = sched["per_epoch"], sched["total"]
    for job in jobs.values():
        rewind = job.spec.get("rewind") if job.kind in ("imp", "rewind") else None
        if rewind is None:
            continue
        its = parse_step(rewind).iterations(per_epoch)
        if its >= total:
            images = f"{sched['train']:,} images" + (" (train.subset)" if study.train.get("subset") else "")
            raise EttError(
                f"{study.path}: rewind step {rewind} ({its} iterations, for {job.row.get('target') or describe(job)}) "
                f"lies at or past the end of training ({total} iterations: {sched['epochs']} epoch(s) of {per_epoch}, "
                f"{images} at batch {sched['batch']}); set an earlier 'rewind' in [imp] (or the source's), "
                "or train longer"
            )


def check_data(study: Study) -> None:
    """Refuse a study whose dataset is not where its jobs will look: its ``data_root``, else ``$ETT_DATA``, else
    the default folder (only the layout is checked; nothing is decoded)."""
    import os

    from ettcli.data import DATASETS, default_data_root, find_layout

    root = Path(study.data_root) if study.data_root is not None else default_data_root()
    try:
        find_layout(DATASETS[study.dataset], root)
    except EttError as exc:
        if study.data_root is not None:
            where = "key 'data_root'"
        elif os.environ.get("ETT_DATA"):
            where = "no 'data_root' in the file, and $ETT_DATA"
        else:
            where = f"no 'data_root' in the file and $ETT_DATA is not set, so {root}"
        reason = str(exc).split("; pass --")[0]  # the study file, not a command-line flag, says where data is
        raise EttError(
            f"{study.path}: {where}: {reason}; set data_root to the folder holding the {study.dataset} data "
            "(or $ETT_DATA)"
        ) from None


def write_jobs(study: Study, root: Path, jobs: dict[str, Job]) -> None:
    """Write ``job.json`` of every job whose file is missing or differs, and the study file's copy."""
    from ettcli.stfile import atomic_path, check_writable

    check_writable(root, folder=True)  # a read-only study folder is one line, before anything is written
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EttError(f"{root}: cannot create the study folder ({exc.strerror}); choose another --out") from None
    for job in jobs.values():
        env = {**job.env, "data_root": study.data_root, "workers": study.train.get("workers")}
        content = json.dumps(
            {"key": job.key, "kind": job.kind, "spec": job.spec, "deps": list(job.deps), "row": job.row, "env": env},
            indent=1,
            sort_keys=True,
        )
        path = job_folder(root, job.key) / JOB
        try:
            if path.read_text() == content:
                continue
        except FileNotFoundError:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EttError(f"{path.parent}: cannot create the job's folder ({exc.strerror})") from None
        with atomic_path(path) as tmp:
            tmp.write_text(content)
    copy = root / STUDY_COPY
    text = study.path.read_text(encoding="utf-8")
    if not copy.is_file() or copy.read_text(encoding="utf-8") != text:
        with atomic_path(copy) as tmp:
            tmp.write_text(text, encoding="utf-8")


def finished(root: Path, jobs: dict[str, Job]) -> set[str]:
    return {k for k in jobs if is_finished(root, k)}


def ready_jobs(root: Path, jobs: dict[str, Job]) -> list[Job]:
    """Jobs not done whose inputs are all done and that no live process holds (what ``--emit`` prints)."""
    done = finished(root, jobs)
    out = []
    for key, job in jobs.items():
        if key in done or any(d not in done for d in job.deps):
            continue
        if JobLock(job_folder(root, key) / LOCK).busy():
            continue
        out.append(job)
    return out


def write_results(root: Path, jobs: dict[str, Job]) -> tuple[Path, int]:
    """Rewrite ``results.jsonl`` (the trainings' rows) and ``lmc.jsonl`` (the LMC jobs' rows, when the study has
    any) from the results of every finished job of the plan, in plan order."""
    from ettcli.stfile import atomic_path

    lines: dict[str, list[str]] = {RESULTS: [], LMC_RESULTS: []}
    for key, job in jobs.items():
        res = read_result(root, key)
        if res:
            lines[LMC_RESULTS if job.kind == "lmc" else RESULTS] += [
                json.dumps(r, sort_keys=True) for r in res.get("rows", [])
            ]
    for name, rows in lines.items():
        if name == LMC_RESULTS and not any(j.kind == "lmc" for j in jobs.values()):
            continue
        with atomic_path(root / name) as tmp:
            tmp.write_text("".join(x + "\n" for x in rows))
    return root / RESULTS, len(lines[RESULTS])


def make_executor(study: Study, root: Path, kind: str | None = None, jobs: int | None = None, jobs_per_gpu=None):
    from ettcli.study.executors import LocalExecutor, SubmititExecutor

    kind = kind or study.executor.kind
    if kind == "slurm":
        slurm = dict(study.executor.slurm)
        if jobs is not None:
            slurm["array_parallelism"] = jobs
        return SubmititExecutor(root, slurm, study.name)
    if kind != "local":
        raise EttError(f"executor {kind}: choose local or slurm")
    return LocalExecutor(
        root,
        jobs if jobs is not None else study.executor.jobs,
        jobs_per_gpu or study.executor.jobs_per_gpu,
        study.train.get("device", "auto"),
    )


def run_study(
    study: Study,
    root: str | Path | None = None,
    executor=None,
    on_event: Callable[[Event, Counts], None] | None = None,
    poll: float = 0.2,
    results_every: float = 30.0,
) -> Outcome:
    """Run every missing job of ``study`` in ``root`` (default: the study's folder) and write results.jsonl.

    ``executor``: a :class:`~ettcli.study.executors.LocalExecutor` or ``SubmititExecutor`` (default: the
    study's). ``on_event`` sees every job event with the current counts. A KeyboardInterrupt stops the
    running jobs (they checkpoint), writes the results so far and propagates.
    """
    root = Path(root) if root is not None else study.out
    jobs = plan_jobs(study)
    write_jobs(study, root, jobs)
    executor = executor or make_executor(study, root)
    on_event = on_event or (lambda e, c: None)

    order = {k: i for i, k in enumerate(jobs)}
    dependents: dict[str, list[str]] = defaultdict(list)
    waiting: dict[str, int] = {}
    done = finished(root, jobs)
    counts = Counts(total=len(jobs), done=len(done), before=len(done))
    for key, job in jobs.items():
        for d in job.deps:
            dependents[d].append(key)
        waiting[key] = sum(1 for d in job.deps if d not in done)
    ready = [k for k, n in waiting.items() if n == 0 and k not in done]
    elsewhere: set[str] = set()
    failed: list[tuple[str, str | None]] = []
    started: dict[str, float] = {}
    log = open(root / STUDY_LOG, "a")  # noqa: SIM115 (closed in finally)

    def note(event: Event) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if event.kind in ("done", "failed", "blocked", "interrupted"):
            took = f" in {event.seconds:.0f} s" if event.seconds is not None else ""
            extra = f"; log: {event.detail}" if event.detail else ""
            log.write(f"{stamp} {event.kind} {event.job.key} ({describe(event.job)}){took}{extra}\n")
            log.flush()
        on_event(event, counts)

    def finish(key: str) -> None:
        if key in done:
            return
        done.add(key)
        counts.done += 1
        for d in dependents[key]:
            waiting[d] -= 1
            if waiting[d] == 0 and d not in done:  # a finished job waits on one that runs again (its result was lost)
                ready.append(d)

    def block(key: str) -> None:
        for d in dependents[key]:
            if waiting.get(d, 0) >= 0:
                waiting[d] = -1
                counts.blocked += 1
                note(Event("blocked", jobs[d], f"waits on {key}"))
                block(d)

    last_results = time.monotonic()
    try:
        while ready or executor.running() or elsewhere:
            # jobs held elsewhere: done, or free again (their owner stopped)
            for key in list(elsewhere):
                if is_finished(root, key):
                    elsewhere.discard(key)
                    counts.elsewhere -= 1
                    finish(key)
                    note(Event("done", jobs[key], "by another process"))
                elif not JobLock(job_folder(root, key) / LOCK).busy():
                    elsewhere.discard(key)
                    counts.elsewhere -= 1
                    ready.append(key)
            # start what is ready, in plan order (IMP chains first, then each ticket's trainings; the order
            # the wall-time estimate assumes): light jobs here, heavy ones while the executor has room
            ready.sort(key=order.__getitem__)
            heavy = []
            for key in list(ready):
                job = jobs[key]
                if is_finished(root, key):
                    ready.remove(key)
                    finish(key)
                    continue
                if JobLock(job_folder(root, key) / LOCK).busy():
                    ready.remove(key)
                    elsewhere.add(key)
                    counts.elsewhere += 1
                    continue
                if job.light:
                    ready.remove(key)
                    t0 = time.monotonic()
                    try:
                        status = run_job(root, key, log=False)
                    except EttError as exc:
                        counts.failed += 1
                        failed.append((key, str(exc)))
                        note(Event("failed", job, str(exc)))
                        block(key)
                        continue
                    if status == "busy":
                        elsewhere.add(key)
                        counts.elsewhere += 1
                        continue
                    finish(key)
                    note(Event("done", job, None, time.monotonic() - t0))
                elif len(heavy) < executor.free():
                    ready.remove(key)
                    heavy.append(key)
            if heavy:
                executor.submit(heavy)
                for key in heavy:
                    started[key] = time.monotonic()
                    counts.running += 1
                    note(Event("started", jobs[key]))
            # collect what finished
            for key, outcome, detail in executor.poll():
                counts.running -= 1
                took = time.monotonic() - started.pop(key, time.monotonic())
                if outcome == "done":
                    finish(key)
                    note(Event("done", jobs[key], None, took))
                elif outcome == "busy":
                    elsewhere.add(key)
                    counts.elsewhere += 1
                    note(Event("busy", jobs[key]))
                else:
                    counts.failed += 1
                    failed.append((key, detail))
                    note(Event(outcome, jobs[key], detail, took))
                    block(key)
            if time.monotonic() - last_results > results_every:
                write_results(root, jobs)
                last_results = time.monotonic()
            if not heavy:
                time.sleep(poll)
    except KeyboardInterrupt as exc:
        import signal

        running = executor.running()
        executor.stop()  # running jobs stop at a checkpoint, or had already finished: say which
        kept = sorted(k for k in running if is_finished(root, k))
        counts.running -= len(running)
        counts.done += len(kept)
        for key in kept:
            note(Event("done", jobs[key], None, time.monotonic() - started.get(key, time.monotonic())))
        stopped = sorted(set(running) - set(kept))
        for key in stopped:
            note(Event("interrupted", jobs[key], None, time.monotonic() - started.get(key, time.monotonic())))
        raise StudyInterrupted(getattr(exc, "signum", signal.SIGINT), kept, stopped) from None
    finally:
        executor.stop()  # at the end: ends idle workers; on an interrupt: stops running jobs at a checkpoint
        path, n = write_results(root, jobs)
        log.close()
    return Outcome(counts, failed, n, path)
