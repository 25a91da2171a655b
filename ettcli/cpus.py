"""CPU threads: how many CPUs this process may use, and the thread count torch runs with.

Running torch (oneDNN) with more threads than the CPUs a process may use is never faster, and on a 2-core
machine it crashed training outright (``free(): invalid next size``, ``double free or corruption`` with 3 or 8
threads; ``scripts/threads_crash_repro.py`` reproduces it in plain torch). So every place that sets torch's
threads (training, scoring, LMC) goes through :func:`threads_for`, which clamps a larger request to
:func:`usable_cpus` with a warning.

No torch here: the study executors use this module for their arithmetic before any job imports torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ettcli.errors import warn

CGROUP = Path("/sys/fs/cgroup")


def _cgroup_paths() -> list[tuple[str, str]]:
    """(controllers, path) of this process's cgroups, from ``/proc/self/cgroup``."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[1], parts[2]))
    return out


def cgroup_cpu_limit(root: Path = CGROUP, paths: list[tuple[str, str]] | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us`` in v1), or None where no quota is set."""
    paths = _cgroup_paths() if paths is None else paths
    candidates: list[tuple[Path, str]] = []
    for controllers, path in paths:
        rel = path.lstrip("/")
        if controllers == "":  # v2: one unified hierarchy
            candidates += [(root / rel / "cpu.max", "v2"), (root / "cpu.max", "v2")]
        elif "cpu" in controllers.split(","):
            for mount in (controllers, "cpu", "cpu,cpuacct"):
                candidates += [(root / mount / rel, "v1"), (root / mount, "v1")]
    for where, kind in candidates:
        try:
            if kind == "v2":
                quota, period = where.read_text().split()[:2]
                if quota == "max":
                    return None
                return int(quota) / int(period)
            quota = int((where / "cpu.cfs_quota_us").read_text())
            period = int((where / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 or period <= 0 else quota / period
    return None


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity (``os.sched_getaffinity``), lowered to a cgroup CPU quota
    where one is set (rounded up: a quota of 1.5 CPUs runs 2 threads). Not the machine's count."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


def omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` where it is set to a positive whole number (its first value, if a list)."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def threads_for(requested: int | None = None, what: str = "--threads") -> int:
    """The thread count to run torch with: ``requested`` (named ``what`` in the warning), else
    ``OMP_NUM_THREADS``, else every usable CPU; never more than :func:`usable_cpus`.

    A larger request is clamped with a warning that says why.
    """
    n = usable_cpus()
    if requested is None:
        requested, what = omp_threads(), "OMP_NUM_THREADS"
        if requested is None:
            return n
    if requested > n:
        warn(
            f"{what} {requested} is more than the {n} CPU(s) this process may use; running {n} thread(s) "
            f"(more threads than CPUs is never faster here and can crash torch's CPU kernels)"
        )
        return n
    return requested


def clamp_torch_threads(what: str = "torch's thread count (OMP_NUM_THREADS or torch.set_num_threads)") -> int:
    """Lower torch's current thread count to :func:`usable_cpus` (with :func:`threads_for`'s warning) where it
    is larger, for code that computes with torch without a thread setting of its own (scoring)."""
    import torch

    n = torch.get_num_threads()
    clamped = threads_for(n, what)
    if clamped != n:
        torch.set_num_threads(clamped)
    return clamped
