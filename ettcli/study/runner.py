"""Running one job of a planned study: what ``ett study job DIR KEY``, the local executor's processes and
submitit's Slurm tasks all call (:func:`run_job`).

A job's folder ``DIR/jobs/KEY/`` holds ``job.json`` (written by the driver: kind, identity, inputs),
``lock`` while it runs, ``attempts.jsonl`` (one line per start and end, with host and pid), ``log.txt`` and,
once finished, ``result.json`` (its results rows and outputs). A finished job is never run again; one whose
lock is held by a live process is left to it (``"busy"``).

Each kind has its public function here (:data:`RUNNERS`: ``run_imp``, ``run_train``, ...), which takes the
job's typed spec (:mod:`ettcli.study.jobs`). The work itself composes the core: :func:`ettcli.lottery.imp` level by level, :func:`ettcli.train.train_ticket`
(``stop_at`` for rewind points), :func:`ettcli.transform.apply_plan` and :func:`ettcli.pruning.prune`.
torch is imported only by the kinds that train or score.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from ettcli.errors import EttError, Interrupted
from ettcli.locks import JobLock
from ettcli.runs import FINAL, RunFolder
from ettcli.study.graph import JOBS_DIR
from ettcli.study.jobs import (
    DenseJob,
    ImpJob,
    JobSpec,
    LmcJob,
    PruneJob,
    RewindJob,
    TrainJob,
    TransferJob,
    spec_of,
)

JOB = "job.json"
RESULT = "result.json"
ATTEMPTS = "attempts.jsonl"
LOG = "log.txt"
LOCK = "lock"  # the job's lock (its training, if any, holds its own in run/)


def job_folder(root: Path, key: str) -> Path:
    return Path(root) / JOBS_DIR / key


def read_job(root: Path, key: str) -> dict:
    path = job_folder(root, key) / JOB
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EttError(f"{path}: no such job; run 'ett study run' (or --emit) on the study first") from None
    except ValueError:
        raise EttError(f"{path}: not a valid job file; rerun 'ett study run' to rewrite it") from None


def read_result(root: Path, key: str) -> dict | None:
    """The job's result, or ``None`` when it has none: a missing, unreadable or damaged ``result.json`` (one that
    is not a result of this job with its rows) means the job is not finished, so it runs again."""
    try:
        res = json.loads((job_folder(root, key) / RESULT).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or res.get("key") != key or not isinstance(res.get("rows"), list):
        return None
    return res


def is_finished(root: Path, key: str) -> bool:
    return read_result(root, key) is not None


def failure_reason(root: Path, key: str) -> str | None:
    """The one-line reason of the job's last failed attempt (from ``attempts.jsonl``), if it recorded one."""
    try:
        lines = (job_folder(root, key) / ATTEMPTS).read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "failed" and entry.get("error"):
            error = str(entry["error"]).splitlines()[0]
            return error.removeprefix("EttError: ")
    return None


def _note(folder: Path, event: str, **extra) -> None:
    line = {"event": event, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), **extra}
    with open(folder / ATTEMPTS, "a") as fh:
        fh.write(json.dumps(line) + "\n")


@contextlib.contextmanager
def _logging_to(path: Path):
    """Send this process's stdout and stderr (file descriptors included) to ``path``; a native crash (a fatal
    signal) also leaves Python's fault dump there, naming the signal (see :func:`died`)."""
    import faulthandler

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    ours = not faulthandler.is_enabled()  # one enabled by the caller (pytest, -X faulthandler) is left alone
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if ours:
            faulthandler.enable(file=2, all_threads=False)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if ours:
            faulthandler.disable()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


# the signals Python's fault handler names in its dump ("Fatal Python error: Aborted")
_FAULTS = {"Segmentation fault": "SIGSEGV", "Aborted": "SIGABRT", "Bus error": "SIGBUS",
           "Floating-point exception": "SIGFPE", "Floating point exception": "SIGFPE",
           "Illegal instruction": "SIGILL"}  # fmt: skip


def ended_unseen(root: Path, key: str) -> bool:
    """Whether the job's last attempt started and never noted an end: its process died without Python seeing
    it (a native crash, SIGKILL), so nothing was written but the log."""
    try:
        lines = (job_folder(root, key) / ATTEMPTS).read_text().splitlines()
        return bool(lines) and json.loads(lines[-1]).get("event") == "start"
    except (OSError, ValueError):
        return False


def died(root: Path, key: str, exitcode: int | None = None) -> str:
    """How the driver reports a job whose process died: its exit status (the signal, for a native crash), the
    last line its log holds before Python's fault dump, and where the log is. ``exitcode`` as
    ``multiprocessing`` gives it (``-N`` for signal N); unknown (submitit) it is read from the fault dump.
    The job has no ``result.json``, so the next ``ett study run`` runs it again."""
    import signal

    log = job_folder(root, key) / LOG
    try:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        lines = []
    dump = next((i for i, x in enumerate(lines) if x.startswith("Fatal Python error: ")), None)
    before = lines[:dump] if dump is not None else lines
    name = None
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            name = signal.Signals(-exitcode).name
    elif dump is not None:
        name = _FAULTS.get(lines[dump].removeprefix("Fatal Python error: ").strip())
    if name is not None:
        status = f"killed by {name} (exit status {128 + signal.Signals[name].value})"
    elif exitcode is not None:
        status = f"exit status {exitcode}"
    else:
        status = "ended without a word (killed, or out of memory?)"
    last = f'; its log ends: "{before[-1][:200]}"' if before else ""
    return f"its process died: {status}{last}; log: {log}"


def run_job(root: str | os.PathLike, key: str, *, threads: int | None = None, log: bool = True) -> str:
    """Run job ``key`` of the study in ``root``: ``"done"``, ``"done-before"`` or ``"busy"``.

    A failure raises (an :class:`EttError` for bad input) after noting it in ``attempts.jsonl``; with
    ``log``, the job's output goes to its ``log.txt``.
    """
    from ettcli.stfile import atomic_path

    root = Path(root)
    folder = job_folder(root, key)
    job = read_job(root, key)
    if is_finished(root, key):
        return "done-before"
    waiting = [d for d in job.get("deps", []) if not is_finished(root, d)]
    if waiting:  # refused before any attempt is noted: the job has not failed, it cannot start yet
        first = waiting[0]
        kind = read_job(root, first).get("kind", "?") if (job_folder(root, first) / JOB).is_file() else "?"
        more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
        raise EttError(
            f"job {key} waits on job {first} ({kind}){more}, which has not finished; run that first "
            f"(ett study job {root} {first}) or let 'ett study run' run the study"
        )
    try:
        spec = spec_of(job)
    except EttError as exc:
        raise EttError(f"{folder / JOB}: {exc}; rerun 'ett study run' to rewrite it") from None
    lock = JobLock(folder / LOCK)
    if not lock.acquire():
        return "busy"
    try:
        if is_finished(root, key):
            return "done-before"
        lock.start_heartbeat()
        _note(folder, "start", threads=threads)
        t0 = time.time()
        try:
            with _logging_to(folder / LOG) if log else contextlib.nullcontext():
                if log:
                    print(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()} pid {os.getpid()}: {key}")
                try:
                    rows, outputs = RUNNERS[spec.kind](root, job, spec, threads)
                except EttError as exc:
                    print(f"ett: error: {exc}", file=sys.stderr)
                    raise
                except BaseException as exc:
                    if log and not _interrupted(exc):
                        traceback.print_exc()
                    raise
        except BaseException as exc:
            _note(folder, "interrupted" if _interrupted(exc) else "failed", error=f"{type(exc).__name__}: {exc}"[:500])
            raise
        result = {"key": key, "kind": job["kind"], "rows": rows, "outputs": outputs, "seconds": time.time() - t0,
                  "host": socket.gethostname(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
        with atomic_path(folder / RESULT) as tmp:
            tmp.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
        _note(folder, "done", seconds=result["seconds"])
        return "done"
    finally:
        lock.release()


def _interrupted(exc: BaseException) -> bool:
    return isinstance(exc, (KeyboardInterrupt, Interrupted))


# --- the kinds ------------------------------------------------------------------------------------------------
def _settings(job: dict, spec: JobSpec, threads: int | None):
    from ettcli.train import TrainSettings

    env = job.get("env", {})
    return TrainSettings(**spec.settings, data_root=env.get("data_root"), workers=env.get("workers"), threads=threads)


def _hooks(label: str):
    from ettcli.train import Hooks

    def epoch(row):
        print(
            f"{label} epoch {row['epoch']} ({row['step']}): train loss {row['train_loss']:.4f}, "
            f"test acc {100 * row['test_accuracy']:.2f}%, {row['images_per_second']:.0f} images/s",
            flush=True,
        )

    return Hooks(epoch=epoch, info=lambda line: print(line, flush=True))


def _rel(root: Path, path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _row(root: Path, job: dict, run_folder: Path, ticket, **extra) -> dict:
    """One results row: the job's labels, the ticket's sparsity, the run's accuracy, time and FLOPs."""
    from ettcli.data import DATASETS
    from ettcli.flops import ticket_forward_flops, training_flops

    run = RunFolder.reading(run_folder)
    summary, config = run.summary(), run.config()
    batch = config["identity"]["recipe"]["batch_size"]
    image = DATASETS[config["identity"]["dataset"]].image_size
    total, kept = ticket.counts()
    forward = ticket_forward_flops(ticket, image)
    return {
        **job["row"],
        **extra,
        "sparsity": 1 - kept / total if total else 0.0,
        "kept": kept,
        "prunable": total,
        "final_test_accuracy": summary["final_test_accuracy"],
        "best_test_accuracy": summary["best_test_accuracy"],
        "epochs": summary["epochs"],
        "start_step": summary["start_step"],
        "steps": summary["steps"],
        "forward_flops": forward,
        "train_flops": training_flops(forward, summary["steps"] * batch),
        "seconds": summary["seconds"],
        "device": summary["device"],
        "precision": summary["precision"],
        "run": _rel(root, run_folder),
        "job": job["key"],
    }


def run_imp(root: Path, job: dict, s: ImpJob, threads: int | None) -> tuple[list[dict], dict]:
    """IMP up to ``s.level`` in the study's IMP folder (earlier levels are found finished); rows of its levels."""
    from ettcli.lottery import ImpSpec, imp
    from ettcli.models import init_ticket
    from ettcli.ticket import read_ticket

    src = s.source
    if "arch" in src:
        source = init_ticket(src["arch"], src["init_seed"], src["num_classes"])
    else:
        source = read_ticket(job["env"]["source_ticket"])
        if source.fingerprint() != src["fingerprint"]:
            raise EttError(
                f"{job['env']['source_ticket']} changed since the study was planned; rerun 'ett study run' to plan it again"
            )
    out = root / s.folder
    rows = imp(
        source,
        _settings(job, s, threads),
        levels=s.level,
        out=out,
        spec=ImpSpec(rate=s.rate, rewind=s.rewind, scope=s.scope),
        seed=src.get("init_seed", 0),
        hooks_for=lambda level: _hooks(f"level {level}"),
        command="ett study run",
    )
    mine = [r for r in rows if r["level"] == s.level or (s.level == 1 and r["level"] == 0)]
    seed = s.settings["seed"]
    result = []
    for r in mine:
        level_dir = Path(r["folder"])
        ticket = read_ticket(level_dir / "ticket.safetensors")
        result.append(_row(root, job, level_dir, ticket, level=r["level"], seed=seed))
    return result, {"folder": s.folder}


def run_rewind(root: Path, job: dict, s: RewindJob, threads: int | None) -> tuple[list[dict], dict]:
    """A target trained dense from its initialisation to the rewind step; no rows."""
    from ettcli.models import init_ticket
    from ettcli.train import train_ticket

    dense = init_ticket(s.arch, s.init_seed, s.num_classes)
    folder = job_folder(root, job["key"]) / "run"
    train_ticket(dense, _settings(job, s, threads), folder=folder, from_step="0it", stop_at=s.rewind,
                 hooks=_hooks("rewind"), metadata={"ett.command": "ett study run"})  # fmt: skip
    return [], {"ticket": _rel(root, folder / FINAL)}


def run_transfer(root: Path, job: dict, s: TransferJob, threads: int | None) -> tuple[list[dict], dict]:
    """A ticket stretched or squeezed to the target (torch-free); no rows."""
    from ettcli.plan import make_plan
    from ettcli.ticket import read_ticket
    from ettcli.transform import apply_plan

    ticket = read_ticket(root / s.ticket_path)
    option = {}
    if s.mapping:
        option["mapping"] = s.mapping
    else:
        option["order" if s.verb == "stretch" else "drop"] = s.preset
    plan = make_plan(ticket.arch, stages=tuple(s.target), verb=s.verb, **option)
    out = apply_plan(ticket, plan, s.random_copies, s.verb)
    out.metadata["ett.command"] = "ett study run"
    path = job_folder(root, job["key"]) / "ticket.safetensors"
    out.save(path)
    return [], {"ticket": _rel(root, path), "sparsity": out.sparsity()}


def run_prune(root: Path, job: dict, s: PruneJob, threads: int | None) -> tuple[list[dict], dict]:
    """A baseline pruned from the target's rewind weights, matched to the reference ticket; no rows."""
    from ettcli.pruning import METHODS, prune

    method = METHODS.lookup(s.method)
    match = s.match if s.match in method.matches else None
    kwargs = {"like": root / s.like_path, "seed": s.seed, "dataset": s.dataset}
    if method.data:
        kwargs.update(data=job.get("env", {}).get("data_root"), samples_per_class=s.samples_per_class)
    if match is not None:
        kwargs["match"] = match
    if threads:
        import torch

        from ettcli.cpus import threads_for

        torch.set_num_threads(threads_for(threads, "the job's thread count"))
    out = prune(root / s.ticket_path, s.method, **kwargs)
    out.metadata["ett.command"] = "ett study run"
    path = job_folder(root, job["key"]) / "ticket.safetensors"
    out.save(path)
    return [], {"ticket": _rel(root, path), "sparsity": out.sparsity()}


def run_train(root: Path, job: dict, s: TrainJob, threads: int | None) -> tuple[list[dict], dict]:
    """One ticket trained from its rewind step with one seed; its results row."""
    from ettcli.ticket import read_ticket
    from ettcli.train import train_ticket

    ticket = read_ticket(root / s.ticket_path)
    folder = job_folder(root, job["key"]) / "run"
    train_ticket(ticket, _settings(job, s, threads), folder=folder, hooks=_hooks("train"),
                 metadata={"ett.command": "ett study run"})  # fmt: skip
    return [_row(root, job, folder, ticket)], {"run": _rel(root, folder)}


def run_dense(root: Path, job: dict, s: DenseJob, threads: int | None) -> tuple[list[dict], dict]:
    """A target trained dense from its initialisation (the reference accuracy); its results row."""
    from ettcli.models import init_ticket
    from ettcli.train import train_ticket

    ticket = init_ticket(s.arch, s.init_seed, s.num_classes)
    folder = job_folder(root, job["key"]) / "run"
    train_ticket(ticket, _settings(job, s, threads), folder=folder, from_step="0it", hooks=_hooks("dense"),
                 metadata={"ett.command": "ett study run"})  # fmt: skip
    return [_row(root, job, folder, ticket)], {"run": _rel(root, folder)}


def run_lmc(root: Path, job: dict, s: LmcJob, threads: int | None) -> tuple[list[dict], dict]:
    """The linear path between the two trainings of one ticket; its results row."""
    from ettcli.lmc import lmc_pair

    out = job_folder(root, job["key"]) / "lmc"
    record = lmc_pair(
        root / s.a_path,
        root / s.b_path,
        _settings(job, s, threads),
        alphas=s.alphas,
        bn_batches=s.bn_batches,
        bn_reset=s.bn_reset,
        bn_data=s.bn_data,
        train_images=s.train_images,
        out=out,
        on_alpha=lambda r: print(f"alpha {r['alpha']:.2f}: test acc {100 * r['test_accuracy']:.2f}%", flush=True),
    )
    test, train = record["test"], record["train"]
    row = {
        **job["row"],
        "seeds": s.seeds,
        "sparsity": record["sparsity"],
        "instability": test["instability"],
        "train_instability": train["instability"] if train else None,
        "endpoint_test_accuracy": [test["accuracy"][0], test["accuracy"][-1]],
        "worst_test_accuracy": min(test["accuracy"]),
        "alphas": len(record["alphas"]),
        "bn_reset": s.bn_reset,
        "seconds": record["seconds"]["evaluation"],
        "lmc": _rel(root, out / "lmc.json"),
        "job": job["key"],
    }
    return [row], {"lmc": row["lmc"]}


# each kind's function: (study folder, job.json as read, the job's typed spec, threads) -> (rows, outputs)
RUNNERS = {"imp": run_imp, "rewind": run_rewind, "transfer": run_transfer, "prune": run_prune, "train": run_train,
           "dense": run_dense, "lmc": run_lmc}  # fmt: skip


# --- process entry points -------------------------------------------------------------------------------------
def worker_main(conn, threads: int | None, gpu: str | None, driver: int | None = None) -> None:
    """A local executor's worker: receives ``(root, key, environment)``, runs the job, answers its outcome
    (``done``, ``busy``, ``failed``, ``interrupted``); ``None`` or a closed pipe ends it, and so does the end
    of the ``driver`` process (its pid): a running job is then stopped as SIGTERM stops it, at a checkpoint."""
    import signal

    from ettcli.errors import on_signal

    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before anything touches CUDA
    for name in ("SIGTERM", "SIGHUP"):  # the driver's stop: an interrupt, so a job stops cleanly (as under ett)
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    if driver is not None:
        import threading

        threading.Thread(target=_end_with, args=(driver,), name="ett-driver-watch", daemon=True).start()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg is None:
            return
        root, key, environ = msg
        os.environ.clear()
        os.environ.update(environ)
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        try:
            outcome = "busy" if run_job(root, key, threads=threads) == "busy" else "done"
        except BaseException as exc:  # the job's log holds the error; the driver reports where it is
            outcome = "interrupted" if _interrupted(exc) else "failed"
        try:
            conn.send(outcome)
        except (BrokenPipeError, OSError):
            return
        if outcome == "interrupted":
            return


def _end_with(pid: int) -> None:
    """Wait for process ``pid`` to end (a killed driver), then send this process SIGTERM. A pidfd is readable
    once the process has exited, zombie or not; without one, poll its pid."""
    import select
    import signal

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
    else:
        while True:
            time.sleep(2.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except OSError:
                continue
    os.kill(os.getpid(), signal.SIGTERM)


def submitit_entry(root: str, key: str, threads: int | None) -> str:
    """What a submitit (Slurm) task runs; its return value is the job's status."""
    return run_job(root, key, threads=threads)
