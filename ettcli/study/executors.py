"""Executors: where a study's heavy jobs run. Both hand a job to :func:`ettcli.study.runner.run_job`.

* :class:`LocalExecutor`: concurrent processes on this machine, forked from a server that has imported torch
  once. On GPU machines each process sees one GPU (``jobs_per_gpu`` processes share it); on CPUs the cores
  are split between the concurrent jobs (each trains with ``cores // jobs`` threads).
* :class:`SubmititExecutor`: Slurm job arrays through submitit (one array per wave of ready jobs), with
  partition, time, GPUs, CPUs and memory from the study's ``[slurm]`` table. ``cluster = "local"`` runs the
  same arrays through submitit's own local executor.

``poll()`` reports finished jobs as ``(key, outcome, detail)``: outcome ``done``, ``busy`` (another process
holds the job's lock), ``interrupted`` or ``failed`` (detail: where its log is).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ettcli.errors import EttError
from ettcli.study.runner import BUSY_EXIT, LOG, job_folder


def visible_gpus(device: str) -> list[str]:
    """The GPUs jobs may use (``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``); none for ``device = "cpu"``."""
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
    return [str(i) for i, line in enumerate(x for x in out.splitlines() if x.startswith("GPU "))]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class LocalExecutor:
    """Up to ``slots`` job processes at once (see the module docstring)."""

    kind = "local"

    def __init__(self, root: Path, jobs: int | None, jobs_per_gpu: int = 1, device: str = "auto"):
        import multiprocessing

        self.root = Path(root)
        gpus = visible_gpus(device)
        if gpus:
            per = jobs_per_gpu
            self.slot_gpus: list[str | None] = [g for g in gpus for _ in range(per)]
            if jobs is not None:
                self.slot_gpus = self.slot_gpus[:jobs] if jobs <= len(self.slot_gpus) else self.slot_gpus
        else:
            self.slot_gpus = [None] * (jobs or 1)
        self.slots = len(self.slot_gpus)
        self.threads = max(1, cores() // self.slots)
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(["ettcli.study.preload"])
        self.procs: dict[str, tuple[object, int]] = {}

    def describe(self) -> str:
        where = f"{len(set(g for g in self.slot_gpus if g is not None))} GPU(s)" if self.slot_gpus[0] else "CPU"
        return f"local: {self.slots} job(s) at once on {where}, {self.threads} thread(s) each"

    def free(self) -> int:
        return self.slots - len(self.procs)

    def running(self) -> set[str]:
        return set(self.procs)

    def submit(self, keys: list[str]) -> None:
        from ettcli.study.runner import child_main

        used = {slot for _, slot in self.procs.values()}
        free = [i for i in range(self.slots) if i not in used]
        for key in keys:
            slot = free.pop(0)
            args = (str(self.root), key, self.threads, dict(os.environ), self.slot_gpus[slot])
            p = self.ctx.Process(target=child_main, args=args, name=f"ett-job-{key}")
            p.start()
            self.procs[key] = (p, slot)

    def poll(self) -> list[tuple[str, str, str | None]]:
        out = []
        for key, (p, _) in list(self.procs.items()):
            if p.is_alive():
                continue
            p.join()
            del self.procs[key]
            log = str(job_folder(self.root, key) / LOG)
            if p.exitcode == 0:
                out.append((key, "done", None))
            elif p.exitcode == BUSY_EXIT:
                out.append((key, "busy", None))
            elif p.exitcode is not None and (p.exitcode < 0 or p.exitcode >= 128):
                out.append((key, "interrupted", log))
            else:
                out.append((key, "failed", log))
        return out

    def stop(self, timeout: float = 60.0) -> None:
        """Ask every running job to stop (SIGTERM: training writes a checkpoint first), then wait for them."""
        import time

        for p, _ in self.procs.values():
            if p.is_alive():
                p.terminate()
        end = time.monotonic() + timeout
        for p, _ in self.procs.values():
            p.join(max(0.0, end - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        self.procs.clear()


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
        # a Slurm task may use the CPUs it was given (its affinity); submitit's local cluster starts every
        # job at once, so each gets one thread there unless [slurm] cpus says otherwise
        self.threads = slurm.get("cpus") or (1 if self.cluster == "local" else None)
        self.jobs: dict[str, object] = {}
        self.slots = None

    def describe(self) -> str:
        return f"slurm through submitit ({self.cluster}), logs in {self.root / 'slurm'}"

    def free(self) -> int:
        return 1 << 30

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
            else:
                out.append((key, "failed", f"{job_folder(self.root, key) / LOG} (submitit: {h.paths.stderr})"))
        return out

    def stop(self, timeout: float = 0.0) -> None:
        """Leave submitted jobs to the cluster: they finish, and a later run collects them."""
        self.jobs.clear()
