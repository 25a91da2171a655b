"""``ett study``: the whole E-LTH experiment from one TOML file: init, run, job, report, plot."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ettcli.commands.common import EttTyper, fail, handle_errors
from ettcli.errors import EttError

RUN_HELP = (
    "Every job (an IMP level, a transfer, a baseline, a training with one seed) is named by a hash of its "
    "inputs and settings and lives in DIR/jobs/<name>/; a finished job is never run again, so rerunning after "
    "a kill, after adding seeds, targets or methods to the file, or on another machine that shares DIR runs "
    "only what is missing. A lock file (host and pid) keeps two drivers from running one job; a lock whose "
    "owner is gone is taken over. DIR gets results.jsonl (one row per trained ticket) and study.log (one line "
    "per finished job). Ctrl-C stops the running jobs at a checkpoint; rerun to continue."
)


def _example_dir() -> Path:
    """The shipped studies: ``ettcli/studies`` (a link to the repository's ``studies/``, copied into wheels)."""
    import ettcli

    return Path(ettcli.__file__).parent / "studies"


def _examples() -> dict[str, Path]:
    d = _example_dir()
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def init(
    example: Annotated[str, typer.Option("--example", help="Which shipped study to start from.")] = "cifar10-resnet",
    out: Annotated[Path | None, typer.Option("-o", "--out", help="File to write (default EXAMPLE.toml here).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented study file to start from (a shipped study: cifar10-resnet, imagenet-resnet, cifar10-mini)."""
    from ettcli.stfile import atomic_path

    found = _examples()
    if example not in found:
        where = f"; ett looks for them in {_example_dir()}" if not found else ""
        raise EttError(f"unknown example '{example}'; choose one of: {', '.join(found) or 'none found'}{where}")
    out = out or Path(f"{example}.toml")
    if out.exists() and not force:
        raise EttError(f"{out} exists; choose another -o or pass --force to overwrite it")
    if not out.parent.exists():
        raise EttError(f"{out}: folder {out.parent} does not exist; create it first")
    with atomic_path(out) as tmp:
        tmp.write_text(found[example].read_text(encoding="utf-8"), encoding="utf-8")
    typer.echo(f"wrote {out}; check it with: ett study run {out} --dry-run")


def run(
    study_file: Annotated[Path, typer.Argument(help="The study file (TOML).", metavar="STUDY.toml")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Study folder (default: the file's 'out', else its name).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the job graph and its estimated cost; run nothing.")
    ] = False,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate", help="With --dry-run: train each architecture a few steps here to measure its speed."
        ),
    ] = False,
    jobs: Annotated[
        int | None, typer.Option("--jobs", help="Concurrent jobs (local), or the Slurm array parallelism.")
    ] = None,
    jobs_per_gpu: Annotated[int | None, typer.Option("--jobs-per-gpu", help="Jobs that share one GPU (local).")] = None,
    executor: Annotated[str | None, typer.Option("--executor", help="local or slurm (through submitit).")] = None,
    emit: Annotated[
        bool, typer.Option("--emit", help="Print one 'ett study job' command per ready job; run nothing.")
    ] = False,
) -> None:
    """Run a study: IMP on the sources, transfers to the targets, baselines, every ticket trained per seed."""
    from ettcli.study.spec import load_study

    if jobs is not None and jobs < 1:
        raise EttError(f"--jobs {jobs}: must be at least 1")
    if jobs_per_gpu is not None and jobs_per_gpu < 1:
        raise EttError(f"--jobs-per-gpu {jobs_per_gpu}: must be at least 1")
    if executor is not None and executor not in ("local", "slurm"):
        raise EttError(f"--executor {executor}: choose local or slurm")
    if dry_run and emit:
        raise EttError("give --dry-run or --emit, not both")
    if calibrate and not dry_run:
        raise EttError("--calibrate measures speed for the --dry-run estimate; add --dry-run, or drop --calibrate")
    from ettcli.study.driver import check_data, check_rewinds
    from ettcli.study.graph import plan_jobs

    study = load_study(study_file, out)
    root = study.out
    check_rewinds(study, plan_jobs(study))  # what would fail every job that trains, on any machine
    if dry_run:
        try:
            check_data(study)
        except EttError as exc:  # the data may be where the jobs will run (a cluster), not here
            from ettcli.errors import warn

            warn(f"{exc} (the run checks this before starting)")
        _dry_run(study, root, jobs, jobs_per_gpu, executor, calibrate)
        return
    check_data(study)
    from ettcli.stfile import check_writable

    check_writable(root, folder=True)  # a study folder that cannot be written: one line, before anything starts
    if emit:
        _emit(study, root)
        return
    _run(study, root, jobs, jobs_per_gpu, executor)


def _slots(study, executor, jobs, jobs_per_gpu) -> int:
    from ettcli.study.executors import cores, visible_gpus

    if (executor or study.executor.kind) == "slurm":
        return jobs or study.executor.slurm.get("array_parallelism") or 64
    gpus = visible_gpus(study.train.get("device", "auto"))
    if gpus:
        return min(jobs or 1 << 30, len(gpus) * (jobs_per_gpu or study.executor.jobs_per_gpu))
    return min(jobs or study.executor.jobs or 1, cores())  # LocalExecutor runs no more jobs than CPUs


def _dry_run(study, root, jobs, jobs_per_gpu, executor, calibrate) -> None:
    from rich.table import Table

    from ettcli.commands.common import stdout_console
    from ettcli.study import costs
    from ettcli.study.driver import finished
    from ettcli.study.executors import cores, threads_per_job
    from ettcli.study.graph import plan_jobs

    t0 = time.perf_counter()
    plan = plan_jobs(study)
    done = finished(root, plan)
    slots = _slots(study, executor, jobs, jobs_per_gpu)
    slurm = study.executor.slurm
    if (executor or study.executor.kind) == "local":
        threads = threads_per_job(slots)
    elif slurm.get("cluster") == "local":  # submitit's local cluster: as SubmititExecutor splits this machine
        slots = min(slots, cores())
        threads = threads_per_job(slots, requested=slurm.get("cpus"))
    else:
        threads = slurm.get("cpus", 1)
    archs = sorted({j.cost["arch"] for j in plan.values() if j.cost})
    ips = {**costs.cached_throughput(study, archs, threads), **costs.measured_throughput(root, plan)}
    where = "this study's finished runs and earlier calibrations on this host"
    if calibrate:
        missing = [a for a in archs if a not in ips]
        if missing:
            typer.echo(f"calibrating {', '.join(missing)} ({threads} thread(s)) ...", err=True)
            ips.update(costs.calibrate(study, missing, threads))
    est = costs.estimate(study, root, plan, done, ips, slots)
    table = Table(title=f"study {study.name}: {len(plan)} jobs in {root}")
    from ettcli.study.report import flops_text

    for col in ("job kind", "jobs", "done", "training FLOPs", "hours left"):
        table.add_column(col, justify="right" if col != "job kind" else "left")
    for r in [*est["rows"], est["total"]]:
        hours = "?" if r["hours"] is None else f"{r['hours']:.2f}"
        table.add_row(r["kind"], str(r["jobs"]), str(r["done"]), flops_text(r["flops"]) if r["flops"] else "-", hours)
    console = stdout_console()
    console.print(table)
    if est["total"]["hours"] is None:
        missing = ", ".join(a for a in archs if a not in ips)
        console.print(f"hours: no throughput known for {missing}; add --calibrate to measure it here")
    else:
        speed = ", ".join(f"{a} {v:.0f}" for a, v in sorted(ips.items()) if a in archs)
        console.print(
            f"throughput (training images/s, from {where}): {speed}\n"
            f"estimated wall time with {slots} job(s) at once: {est['wall_hours']:.2f} h "
            f"({threads} thread(s) per job where local)"
        )
    console.print(f"planned in {time.perf_counter() - t0:.2f} s")


def _emit(study, root) -> None:
    import shlex

    from ettcli.study.driver import finished, ready_jobs, write_jobs
    from ettcli.study.graph import plan_jobs

    plan = plan_jobs(study)
    write_jobs(study, root, plan)
    ready = ready_jobs(root, plan)
    for job in ready:
        typer.echo(shlex.join(["ett", "study", "job", str(root), job.key]))
    if not ready:
        done = len(finished(root, plan))
        if done == len(plan):
            typer.echo(f"ett: all {done} jobs of the study in {root} are done; nothing to run", err=True)
        else:
            typer.echo(
                f"ett: no job is ready: {done} of {len(plan)} done, the others wait on jobs that are not done "
                "(failed, or held by another process)",
                err=True,
            )


def _run(study, root, jobs, jobs_per_gpu, executor_kind) -> None:
    from ettcli.study.costs import Eta
    from ettcli.study.driver import make_executor, run_study
    from ettcli.study.graph import plan_jobs

    executor = make_executor(study, root, executor_kind, jobs, jobs_per_gpu)
    slots = executor.slots or _slots(study, executor_kind, jobs, jobs_per_gpu)
    eta = Eta(study, root, plan_jobs(study), slots, executor.threads or 1)
    view = _LiveView(sys.stderr.isatty(), eta)
    typer.echo(f"study {study.name} in {root}: {executor.describe()}", err=True)

    from ettcli.errors import Terminated, signal_name

    def terminate(signum, frame):
        raise Terminated(signum)

    old = signal.signal(signal.SIGTERM, terminate)
    try:
        with view:
            outcome = run_study(study, root, executor, on_event=view.event)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        stopped, kept = getattr(exc, "stopped", []), getattr(exc, "finished", [])
        what = []
        if stopped:
            what.append(f"{len(stopped)} running job(s) stopped at a checkpoint")
        if kept:
            what.append(f"{len(kept)} job(s) had finished and are kept")
        typer.echo(
            f"ett: interrupted by {signal_name(signum)}; {', '.join(what) or 'no job was running'}; "
            "rerun the same command to continue",
            err=True,
        )
        raise typer.Exit(128 + signum) from None
    finally:
        signal.signal(signal.SIGTERM, old)
    c = outcome.counts
    typer.echo(
        f"{c.done} of {c.total} jobs done ({c.before} before this run), {c.failed} failed, {c.blocked} skipped "
        f"after a failure; {outcome.rows} rows in {outcome.results}"
    )
    if outcome.failed:
        from ettcli.study.runner import failure_reason

        for key, log in outcome.failed:
            reason = failure_reason(root, key)  # the job's own one-line error, where it recorded one
            typer.echo(f"failed: {key}: {reason} (log: {log})" if reason else f"failed: {key}: {log}", err=True)
        raise typer.Exit(1)


class _LiveView:
    """A Rich live panel (done / running / failed / left, ETA) on a terminal; plain lines otherwise."""

    def __init__(self, tty: bool, eta=None):
        self.tty = tty
        self.live = None
        self.durations: list[float] = []
        self.t0 = time.monotonic()
        self.last = None
        self.recent: list[str] = []
        self.eta = eta  # a costs.Eta: the time left from the cost model
        self.eta_at: tuple[float, float | None] | None = None  # (when computed, seconds left then)

    def __enter__(self):
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=2, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()

    def _eta(self, counts) -> str:
        now = time.monotonic()
        secs = None
        if self.eta is not None:
            if self.eta_at is None or now - self.eta_at[0] > 5.0:  # the schedule of the jobs left, every 5 s at most
                self.eta_at = (now, self.eta.seconds())
            if self.eta_at[1] is not None:
                secs = max(0.0, self.eta_at[1] - (now - self.eta_at[0]))
        if secs is None:  # no throughput known for some architecture yet: the mean job so far
            if not self.durations or not counts.running:
                return "?"
            avg = sum(self.durations) / len(self.durations)
            secs = avg * (counts.left + counts.running) / max(counts.running, 1)
        return time.strftime("%H:%M:%S", time.gmtime(secs)) if secs < 86400 else f"{secs / 86400:.1f} days"

    def event(self, event, counts) -> None:
        from ettcli.study.graph import describe

        if event.kind == "done" and event.seconds is not None and not event.job.light:
            self.durations.append(event.seconds)
        if self.eta is not None:
            self.eta.event(event.kind, event.job.key)
            if event.kind != "started":
                self.eta_at = None  # a job ended: estimate again
        line = None
        if event.kind in ("done", "failed", "interrupted", "blocked"):
            took = f" ({event.seconds:.0f} s)" if event.seconds is not None else ""
            where = f": {event.detail}" if event.detail and event.kind != "done" else ""
            line = f"{event.kind:<7} {describe(event.job)}{took}{where}"
        summary = (
            f"done {counts.done}/{counts.total}  running {counts.running}  elsewhere {counts.elsewhere}  "
            f"failed {counts.failed}  skipped {counts.blocked}  left {counts.left}  ETA {self._eta(counts)}"
        )
        if self.live is None:
            if line:
                typer.echo(f"{line}   [{summary}]", err=True)
            return
        from rich.console import Group
        from rich.text import Text

        if line:
            self.live.console.print(line)
        self.live.update(Group(Text(summary, style="bold")))


def job(
    folder: Annotated[Path, typer.Argument(help="The study folder.", metavar="DIR")],
    key: Annotated[str, typer.Argument(help="The job's name (a folder under DIR/jobs).", metavar="JOB")],
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads (default: all this process may use).")
    ] = None,
) -> None:
    """Run one job of a planned study (what --emit prints); a finished job is not run again."""
    from ettcli.study.runner import job_folder, run_job

    status = run_job(folder, key, threads=threads)
    words = {
        "done": "done",
        "done-before": "already done",
        "busy": "held by another process (see its lock file); not run",
    }
    typer.echo(f"{key}: {words[status]}; log: {job_folder(folder, key) / 'log.txt'}")
    if status == "busy":
        raise typer.Exit(75)


def report(
    folder: Annotated[
        Path, typer.Argument(help="The study folder (holds results.jsonl), or its study file.", metavar="DIR")
    ],
) -> None:
    """Write DIR/report.md and print it: accuracy per method and sparsity, drop against dense, FLOPs."""
    from ettcli.study.report import write_report

    text, path = write_report(_study_folder(folder))
    typer.echo(text)
    typer.echo(f"wrote {path}", err=True)


def plot(
    folder: Annotated[
        Path, typer.Argument(help="The study folder (holds results.jsonl), or its study file.", metavar="DIR")
    ],
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Figure file: .png, .svg or .pdf (default DIR/figure.png).")
    ] = None,
) -> None:
    """Draw accuracy against weights remaining, one panel per target, as in the paper's figures."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail("ett study plot needs matplotlib: pip install -e '.[plots]' (or pip install matplotlib)")
    from ettcli.stfile import check_writable
    from ettcli.study.plot import plot_study

    folder = _study_folder(folder)
    if out is not None or folder.is_dir():
        check_writable(out if out is not None else folder / "figure.png")  # before the figure is drawn
    path = plot_study(folder, out)
    typer.echo(f"wrote {path}")


def _study_folder(path: Path) -> Path:
    """The study folder named by ``path``: the folder itself, or a study file's output folder."""
    if path.is_file():
        from ettcli.study.spec import load_study

        folder = load_study(path).out
        if not folder.is_dir():
            raise EttError(
                f"{path} is a study file whose folder {folder} does not exist yet; run 'ett study run {path}'"
            )
        return folder
    return path


def register(app: typer.Typer) -> None:
    study_app = EttTyper(
        name="study", help="Run the whole E-LTH study from one file, then tabulate and plot it.", no_args_is_help=True
    )
    study_app.command()(handle_errors(init))
    study_app.command(epilog=RUN_HELP)(handle_errors(run))
    study_app.command()(handle_errors(job))
    study_app.command()(handle_errors(report))
    study_app.command()(handle_errors(plot))
    app.add_typer(study_app)
