"""Executors: where a study's heavy jobs run. Both hand a job to :func:`ettcli.study.runner.run_job`.

* :class:`LocalExecutor`: concurrent worker processes on this machine, forked from a server that has imported
  torch once, each running one job after another. On GPU machines each worker sees one GPU (``jobs_per_gpu``
  workers share it); on CPUs the cores are split between the concurrent jobs (``cores // jobs`` threads each, and never more jobs
  at once than cores).
* :class:`SubmititExecutor`: Slurm job arrays through submitit (one array per wave of ready jobs), with
  partition, time, GPUs, CPUs and memory from the study's ``[slurm]`` table. ``cluster = "local"`` runs the
  same arrays through submitit's own local executor.

``poll()`` reports finished jobs as ``(key, outcome, detail)``: outcome ``done``, ``busy`` (another process
holds the job's lock), ``interrupted`` or ``failed`` (detail: where its log is).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from ettcli.cpus import omp_threads, usable_cpus
from ettcli.errors import EttError, warn
from ettcli.study.runner import LOG, died, ended_unseen, job_folder


def visible_gpus(device: str) -> list[str]:
    """The GPUs jobs may use (``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``); none for ``device = "cpu"``.

    A GPU split into MIG instances gives one entry per instance, its ``MIG-`` UUID: a CUDA process sees one
    MIG instance at most, named that way in ``CUDA_VISIBLE_DEVICES``.
    """
    if device == "cpu":
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus: list[list[str]] = []  # per GPU: its index, or its MIG instances' UUIDs
    for line in out.splitlines():
        if line.startswith("GPU "):
            gpus.append([str(len(gpus))])
        elif gpus and line.strip().startswith("MIG "):
            m = re.search(r"UUID:\s*(MIG-[^)\s]+)", line)
            if m:
                if gpus[-1][0].isdigit():
                    gpus[-1] = []
                gpus[-1].append(m.group(1))
    return [g for per_gpu in gpus for g in per_gpu]


def mps_running() -> bool:
    """Whether the CUDA MPS control daemon is up (its pipe: ``$CUDA_MPS_PIPE_DIRECTORY/control``)."""
    return (Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps") / "control").exists()


def cores() -> int:
    """The CPUs this process, and so the jobs it starts, may use (affinity and cgroup quota)."""
    return usable_cpus()


def threads_per_job(concurrent: int, cpus: int | None = None, requested: int | None = None) -> int:
    """Threads for each of ``concurrent`` jobs running at once on this machine: its CPUs split between them
    (so ``concurrent x threads`` never exceeds them while ``concurrent`` does not), lowered to ``requested``
    (a study's ``[slurm] cpus``) or else ``OMP_NUM_THREADS`` where set; at least 1."""
    n = max(1, (cpus or cores()) // max(1, concurrent))
    limit = requested if requested is not None else omp_threads()
    return max(1, min(n, limit)) if limit else n


class LocalExecutor:
    """Up to ``slots`` jobs at once, each slot a long-lived worker process (see the module docstring).

    Workers are forked from a server that imported torch once; a worker then runs one job after another, so a
    launch costs a message on a pipe rather than a fork of a large process. A worker whose job failed is
    retired and replaced for the next job, so a failure cannot leave state behind for another job.
    """

    kind = "local"

    def __init__(self, root: Path, jobs: int | None, jobs_per_gpu: int = 1, device: str = "auto"):
        import multiprocessing

        self.root = Path(root)
        gpus = visible_gpus(device)
        if gpus:
            self.slot_gpus: list[str | None] = [g for g in gpus for _ in range(jobs_per_gpu)][: jobs or None]
        else:
            n = cores()
            if (jobs or 1) > n:
                warn(f"{jobs} jobs at once is more than the {n} CPU(s) this process may use; running {n} at once")
            self.slot_gpus = [None] * min(jobs or 1, n)
        self.slots = len(self.slot_gpus)
        if gpus and jobs_per_gpu > 1 and not mps_running():
            warn(
                f"{jobs_per_gpu} jobs per GPU without the CUDA MPS daemon: the GPU runs one process at a time, "
                "time-sliced, so the jobs share it without overlapping; start MPS (nvidia-cuda-mps-control -d) "
                "for concurrent kernels, or use jobs_per_gpu = 1"
            )
        self.threads = threads_per_job(self.slots)
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(["ettcli.study.preload"])
        self.workers: list[tuple[object, object] | None] = [None] * self.slots  # (process, pipe) per slot
        self.busy: dict[int, str] = {}  # slot -> job key

    def describe(self) -> str:
        n_gpus = len({g for g in self.slot_gpus if g is not None})
        where = f"{n_gpus} GPU(s)" if n_gpus else "CPU"
        return f"local: {self.slots} job(s) at once on {where}, {self.threads} thread(s) each"

    def free(self) -> int:
        return self.slots - len(self.busy)

    def running(self) -> set[str]:
        return set(self.busy.values())

    def _worker(self, slot: int):
        from ettcli.study.runner import worker_main

        w = self.workers[slot]
        if w is not None and w[0].is_alive():
            return w
        mine, theirs = self.ctx.Pipe()
        p = self.ctx.Process(
            target=worker_main,
            args=(theirs, self.threads, self.slot_gpus[slot], os.getpid()),  # workers end with this process
            name=f"ett-worker-{slot}",
        )
        p.start()
        theirs.close()
        self.workers[slot] = (p, mine)
        return self.workers[slot]

    def submit(self, keys: list[str]) -> None:
        free = [i for i in range(self.slots) if i not in self.busy]
        env = dict(os.environ)
        for key in keys:
            slot = free.pop(0)
            _, pipe = self._worker(slot)
            pipe.send((str(self.root), key, env))
            self.busy[slot] = key

    def _retire(self, slot: int) -> None:
        w, self.workers[slot] = self.workers[slot], None
        if w is not None:
            p, pipe = w
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.send(None)
            pipe.close()
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()

    def poll(self) -> list[tuple[str, str, str | None]]:
        out = []
        for slot, key in list(self.busy.items()):
            p, pipe = self.workers[slot]
            log = str(job_folder(self.root, key) / LOG)
            try:
                outcome = pipe.recv() if pipe.poll() else None
            except (EOFError, OSError):
                outcome = "died"
            if outcome is None:
                if p.is_alive():
                    continue
                outcome = "died"
            del self.busy[slot]
            if outcome in ("done", "busy"):
                out.append((key, outcome, None))
                continue
            self._retire(slot)  # a failed or stopped job's process is not reused
            if outcome == "died":
                p.join(5)
                out.append((key, "failed", died(self.root, key, p.exitcode)))
            else:
                out.append((key, outcome, log))
        return out

    def stop(self, timeout: float = 60.0) -> None:
        """Ask running jobs to stop (SIGTERM: training writes a checkpoint first), then end every worker."""
        import time

        for slot in self.busy:
            p, _ = self.workers[slot]
            if p.is_alive():
                p.terminate()
        end = time.monotonic() + timeout
        for slot in range(self.slots):
            w = self.workers[slot]
            if w is None:
                continue
            p, pipe = w
            with contextlib.suppress(BrokenPipeError, OSError):  # a busy worker reads it once its job has ended
                pipe.send(None)
            p.join(max(0.0, end - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
            pipe.close()
            self.workers[slot] = None
        self.busy.clear()


class SubmititExecutor:
    """Slurm job arrays through submitit; jobs keep running on the cluster if the driver stops."""

    kind = "slurm"

    def __init__(self, root: Path, slurm: dict, name: str):
        try:
            import submitit
        except ImportError:
            raise EttError(
                "the slurm executor runs jobs through submitit, which is not installed; "
                "install it with: pip install -e '.[study]' (or pip install submitit)"
            ) from None
        self.root = Path(root)
        self.cluster = slurm.get("cluster", "slurm")
        self.executor = submitit.AutoExecutor(folder=self.root / "slurm" / "%j", cluster=self.cluster)
        params: dict = {"name": f"ett-{name}"}
        generic = {"time_min": "timeout_min", "gpus": "gpus_per_node", "cpus": "cpus_per_task", "mem_gb": "mem_gb"}
        for k, p in generic.items():
            if k in slurm:
                params[p] = slurm[k]
        for k in ("partition", "array_parallelism", "account", "qos"):
            if k in slurm:
                params[f"slurm_{k}"] = slurm[k]
        try:
            self.executor.update_parameters(**params)
        except (ValueError, TypeError) as exc:
            raise EttError(f"submitit refused the [slurm] settings: {exc}") from None
        # a Slurm task may use the CPUs it was given (its affinity, which training's clamp follows). submitit's
        # local cluster starts every job it is handed at once on this machine, so there at most one job per
        # CPU (or array_parallelism, from --jobs) runs at once, and the CPUs are split between those:
        # [slurm] cpus, meant for cluster nodes, is only an upper bound
        cpus = slurm.get("cpus")
        self.jobs: dict[str, object] = {}
        self.slots = None
        self.threads = cpus
        if self.cluster == "local":
            n = cores()
            self.slots = min(slurm.get("array_parallelism") or n, n)
            self.threads = threads_per_job(self.slots, n, requested=cpus)
            if cpus and cpus > self.threads:
                warn(
                    f"[slurm] cpus = {cpus} is more than a job may use on this machine with submitit's local "
                    f"cluster ({n} CPU(s), up to {self.slots} job(s) at once): {self.threads} thread(s) each"
                )

    def describe(self) -> str:
        return f"slurm through submitit ({self.cluster}), logs in {self.root / 'slurm'}"

    def free(self) -> int:
        return 1 << 30 if self.slots is None else max(0, self.slots - len(self.jobs))

    def running(self) -> set[str]:
        return set(self.jobs)

    def submit(self, keys: list[str]) -> None:
        from ettcli.study.runner import submitit_entry

        if not keys:
            return
        n = len(keys)
        try:
            handles = self.executor.map_array(submitit_entry, [str(self.root)] * n, keys, [self.threads] * n)
        except Exception as exc:  # sbatch missing, refused, ...: one line with submitit's reason
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EttError(f"submitting {n} job(s) through submitit failed: {first}") from None
        self.jobs.update(zip(keys, handles))

    def poll(self) -> list[tuple[str, str, str | None]]:
        out = []
        for key, h in list(self.jobs.items()):
            if not h.done():
                continue
            del self.jobs[key]
            exc = h.exception()
            if exc is None:
                status = h.result()
                out.append((key, "busy" if status == "busy" else "done", None))
            elif ended_unseen(self.root, key):  # a native crash or a kill: no Python error to report
                out.append((key, "failed", f"{died(self.root, key)} (submitit: {h.paths.stderr})"))
            else:
                out.append((key, "failed", f"{job_folder(self.root, key) / LOG} (submitit: {h.paths.stderr})"))
        return out

    def stop(self, timeout: float = 0.0) -> None:
        """Leave submitted jobs to the cluster: they finish, and a later run collects them."""
        self.jobs.clear()
