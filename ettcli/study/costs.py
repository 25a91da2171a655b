"""Cost estimates for a planned study: training FLOPs per job and hours at a throughput measured here.

FLOPs follow :mod:`ettcli.flops` (three sparse forward passes per training image; dense per-layer counts from
torch's flop counter, cached). Planned jobs have no masks yet, so a level-L ticket is counted at IMP's density
``(1 - rate)**L`` in every layer; transfers and baselines land close to it.

Hours need images per second, and training runs dense kernels under masks, so its speed does not depend on
the sparsity. The throughput of each architecture comes, in this order, from the study's own finished
runs (``images_per_second`` in their summaries), from an earlier calibration on this host (cached under
``$ETT_CACHE``), or from :func:`calibrate`, which trains the architecture for a few dozen steps with
:func:`ettcli.train.train_ticket` on the study's data. Evaluation is counted as one forward pass (a third of
a training image) per test image per epoch.
"""

from __future__ import annotations

import json
import socket
import time
from collections import defaultdict
from pathlib import Path

from ettcli.runs import RunFolder
from ettcli.study.graph import Job
from ettcli.study.runner import is_finished, job_folder
from ettcli.study.spec import Study

_CACHE_NAME = "throughput-v1.json"


def _cache_file() -> Path:
    from ettcli.data import cache_dir

    return cache_dir() / _CACHE_NAME


def _calib_key(study: Study, arch: str, threads: int) -> str:
    t = study.train
    parts = [socket.gethostname(), arch, study.dataset, str(t.get("batch_size") or "recipe"), t.get("device", "auto"),
             t.get("precision", "auto"), str(threads)]  # fmt: skip
    return "/".join(parts)


def job_flops(job: Job, image_size: int) -> float:
    """Estimated training FLOPs of one job (0 for jobs that do not train)."""
    from ettcli.flops import forward_flops, training_flops

    c = job.cost
    if not c:
        return 0.0
    dense_images = c.get("dense_images", 0)
    sparse = forward_flops(c["arch"], c["density"], c["num_classes"], image_size)
    dense = forward_flops(c["arch"], 1.0, c["num_classes"], image_size) if dense_images else 0.0
    return training_flops(sparse, c["images"] - dense_images) + training_flops(dense, dense_images)


def job_seconds(job: Job, ips: float | None) -> float | None:
    """Estimated seconds of one job at ``ips`` training images per second (evaluation included)."""
    c = job.cost
    if not c:
        return 0.0
    if not ips:
        return None
    return (c["images"] + c["eval_images"] / 3) / ips


def measured_throughput(root: Path, jobs: dict[str, Job]) -> dict[str, float]:
    """Training images per second per architecture, from the summaries of this study's finished runs."""
    seen: dict[str, list[float]] = defaultdict(list)
    for key, job in jobs.items():
        if job.kind not in ("train", "dense", "rewind"):
            continue
        try:
            ips = RunFolder.reading(job_folder(root, key) / "run").summary()["images_per_second"]
        except (OSError, ValueError, KeyError):
            continue
        seen[job.cost["arch"]].append(float(ips))
    return {a: sorted(v)[len(v) // 2] for a, v in seen.items()}


def cached_throughput(study: Study, archs, threads: int) -> dict[str, float]:
    try:
        cache = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return {a: cache[_calib_key(study, a, threads)] for a in archs if _calib_key(study, a, threads) in cache}


def calibrate(study: Study, archs, threads: int, steps: int = 30, warmup: int = 10) -> dict[str, float]:
    """Train each architecture for ``warmup + steps`` steps on the study's data (``train_ticket``) and cache
    the speed of the last ``steps``: the first ones pay for CUDA's start, cuDNN's autotuning and compiling,
    which on a GPU take longer than hundreds of steps and would make the estimate far too slow."""
    import tempfile

    from ettcli.models import init_ticket
    from ettcli.stfile import atomic_path
    from ettcli.train import Hooks, TrainContext, TrainSettings, train_ticket

    settings = TrainSettings(
        **{k: v for k, v in study.train.items() if k not in ("epochs",)},
        dataset=study.dataset,
        data_root=study.data_root,
        threads=threads,
    )
    out = {}
    with tempfile.TemporaryDirectory(prefix="ett-calibrate-") as tmp:
        for arch in archs:
            ticket = init_ticket(arch, 0, study.num_classes)
            ctx = TrainContext.resolve(ticket, settings)  # the batch and the device train_ticket will use
            batch, cuda = ctx.batch, ctx.device == "cuda"
            marks: dict[int, float] = {}

            def mark(step: int, marks: dict = marks, cuda: bool = cuda) -> None:
                if step in (warmup, warmup + steps):
                    if cuda:
                        import torch

                        torch.cuda.synchronize()  # the steps queued so far are done
                    marks[step] = time.perf_counter()

            stop = f"{warmup + steps}it"
            res = train_ticket(
                ticket, settings, folder=Path(tmp) / arch, from_step="0it", stop_at=stop, hooks=Hooks(step=mark)
            )
            seconds = marks.get(warmup + steps, 0.0) - marks.get(warmup, 0.0)
            out[arch] = steps * batch / seconds if seconds > 0 else float(res.summary["images_per_second"])
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    cache.update({_calib_key(study, a, threads): v for a, v in out.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp_path:
        tmp_path.write_text(json.dumps(cache, indent=1, sort_keys=True))
    return out


def estimate(study: Study, root: Path, jobs: dict[str, Job], done: set[str], ips: dict[str, float], slots: int) -> dict:
    """Per job kind: jobs, done, training FLOPs and hours (left to run); with the total and a wall-clock
    estimate over ``slots`` concurrent jobs (list scheduling along the graph)."""
    from ettcli.data import DATASETS

    image = DATASETS[study.dataset].image_size
    kinds: dict[str, dict] = {}
    secs: dict[str, float | None] = {}
    for key, job in jobs.items():
        k = kinds.setdefault(job.kind, {"kind": job.kind, "jobs": 0, "done": 0, "flops": 0.0, "hours": 0.0})
        k["jobs"] += 1
        k["flops"] += job_flops(job, image)
        s = job_seconds(job, ips.get(job.cost.get("arch"))) if job.cost else 0.0
        secs[key] = s
        if key in done:
            k["done"] += 1
        elif s is None:
            k["hours"] = None
        elif k["hours"] is not None:
            k["hours"] += s / 3600
    rows = list(kinds.values())
    total = {
        "kind": "total",
        "jobs": sum(r["jobs"] for r in rows),
        "done": sum(r["done"] for r in rows),
        "flops": sum(r["flops"] for r in rows),
        "hours": None if any(r["hours"] is None for r in rows) else sum(r["hours"] for r in rows),
    }
    wall = None
    if total["hours"] is not None:
        wall = _wall(jobs, {k: (0.0 if k in done else v or 0.0) for k, v in secs.items()}, slots) / 3600
    return {"rows": rows, "total": total, "wall_hours": wall, "slots": slots, "throughput": ips}


def _wall(jobs: dict[str, Job], secs: dict[str, float], slots: int, occupied: dict[str, float] | None = None) -> float:
    """When the last job would end if, as the driver does, every free slot takes the first ready job in plan
    order (light jobs take no slot and no time). ``occupied``: jobs already in slots, with their seconds left."""
    import heapq

    order = {k: i for i, k in enumerate(jobs)}
    waiting = {k: len(j.deps) for k, j in jobs.items()}
    dependents: dict[str, list[str]] = defaultdict(list)
    for k, j in jobs.items():
        for d in j.deps:
            dependents[d].append(k)
    started = occupied or {}
    ready = [order[k] for k, n in waiting.items() if n == 0 and k not in started]
    heapq.heapify(ready)
    keys = list(jobs)
    running: list[tuple[float, str]] = [(s, k) for k, s in started.items()]
    heapq.heapify(running)
    now = 0.0

    def finish(key: str) -> None:
        for d in dependents[key]:
            waiting[d] -= 1
            if waiting[d] == 0 and d not in started:
                heapq.heappush(ready, order[d])

    while ready or running:
        while ready and (jobs[keys[ready[0]]].light or len(running) < max(1, slots)):
            key = keys[heapq.heappop(ready)]
            if jobs[key].light:
                finish(key)
            else:
                heapq.heappush(running, (now + secs[key], key))
        if running:
            now, key = heapq.heappop(running)
            finish(key)
    return now


class Eta:
    """The wall-clock time left of a running study, from the cost model rather than from an average of the
    jobs finished so far (which mixes two-training IMP jobs with instant ones and says little early on).

    Each job's seconds come from :func:`job_seconds` at the throughput of its architecture: the median of this
    study's finished runs, updated as trainings finish, else an earlier calibration on this host. The jobs left
    are then scheduled over the slots as the driver takes them (:func:`_wall`), the running ones first for what
    remains of their estimate. Feed it the driver's events; :meth:`seconds` is ``None`` while some architecture
    has no throughput known.
    """

    def __init__(self, study: Study, root: Path, jobs: dict[str, Job], slots: int, threads: int):
        import time

        self._clock = time.monotonic
        self.root, self.jobs, self.slots = Path(root), jobs, max(1, slots)
        archs = sorted({j.cost["arch"] for j in jobs.values() if j.cost})
        self.calibrated = cached_throughput(study, archs, threads)
        self.samples: dict[str, list[float]] = defaultdict(list)
        for key, job in jobs.items():
            self._sample(key, job)
        self.over = {k for k in jobs if is_finished(self.root, k)}  # done, failed, blocked
        self.started: dict[str, float] = {}

    def _sample(self, key: str, job: Job) -> None:
        if job.kind not in ("train", "dense", "rewind"):
            return
        try:
            summary = RunFolder.reading(job_folder(self.root, key) / "run").summary()
            self.samples[job.cost["arch"]].append(float(summary["images_per_second"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def event(self, kind: str, key: str) -> None:
        """``kind``: the driver's event kind (started, done, failed, interrupted, blocked, busy)."""
        if kind == "started":
            self.started[key] = self._clock()
            return
        self.started.pop(key, None)
        if kind in ("done", "failed", "blocked", "interrupted"):
            self.over.add(key)
        if kind == "done":
            self._sample(key, self.jobs[key])

    def throughput(self) -> dict[str, float]:
        measured = {a: sorted(v)[len(v) // 2] for a, v in self.samples.items() if v}
        return {**self.calibrated, **measured}

    def seconds(self) -> float | None:
        ips = self.throughput()
        secs: dict[str, float] = {}
        for key, job in self.jobs.items():
            if key in self.over:
                secs[key] = 0.0
                continue
            s = job_seconds(job, ips.get(job.cost.get("arch"))) if job.cost else 0.0
            if s is None:
                return None
            secs[key] = s
        now = self._clock()
        running = {k: max(0.0, secs[k] - (now - t)) for k, t in self.started.items() if k in secs}
        return _wall(self.jobs, secs, self.slots, running)
