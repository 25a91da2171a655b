"""The job graph of a study: every ticket and every training as a job named by a hash of what makes it.

Kinds, and what each one's output is:

* ``imp``: IMP on one network up to one level (the first job holds the dense level 0 and level 1); a chain,
  each level depending on the one before. Output: the IMP folder ``imp/<id>/level_NN/ticket.safetensors``.
* ``rewind``: a target trained dense from its initialisation to the rewind step (``ett train --stop-at``):
  the rewind-point weights that baselines prune. Output: ``jobs/<key>/run/final.safetensors``.
* ``transfer``: a source's level-L ticket stretched or squeezed to a target (torch-free; runs in the driver).
* ``prune``: a baseline (``ett prune METHOD``) of a target's rewind weights, matched to a transferred ticket or
  to the target's IMP ticket. Output: ``jobs/<key>/ticket.safetensors``.
* ``train``: one ticket trained from its rewind step with one seed. ``dense``: a target trained dense from
  its initialisation with one seed (the reference accuracy).
* ``lmc``: the linear path between the trainings of one ticket with the two ``[lmc]`` seeds
  (:func:`ettcli.lmc.lmc_pair`); it trains nothing. Output: ``jobs/<key>/lmc/lmc.json``.

Each kind's spec is a dataclass of :mod:`ettcli.study.jobs`. A job's *identity* is a JSON dict of its settings and its inputs, inputs named by their own job keys, so the
key (``kind-readable-hash``, :func:`ettcli.runs.identity_hash`) covers everything upstream: editing the study
to add seeds, targets or methods adds jobs and keeps every existing key, and changing a setting makes new
keys for exactly the jobs it affects. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ettcli.runs import FINAL, identity_hash
from ettcli.study.jobs import DenseJob, ImpJob, JobSpec, LmcJob, PruneJob, RewindJob, TrainJob, TransferJob
from ettcli.study.spec import Study

LIGHT = frozenset({"transfer"})  # cheap, torch-free jobs that the driver runs itself
JOBS_DIR = "jobs"
IMP_DIR = "imp"
TICKET = "ticket.safetensors"


@dataclass(frozen=True)
class Job:
    """One node of the graph. ``spec`` is the identity (its kind's dataclass); ``deps`` are the keys it waits for."""

    key: str
    kind: str
    spec: JobSpec
    deps: tuple[str, ...] = ()
    row: dict = field(default_factory=dict)  # what its results rows say (target, method, source, level, ...)
    cost: dict = field(default_factory=dict)  # arch, images trained, density, evaluation images: for estimates
    env: dict = field(default_factory=dict)  # where inputs live (not part of the identity)

    @property
    def light(self) -> bool:
        return self.kind in LIGHT

    def folder(self) -> str:
        return f"{JOBS_DIR}/{self.key}"

    def output(self) -> str:
        """The path (relative to the study folder) of the ticket this job makes."""
        if self.kind == "imp":
            return f"{self.spec.folder}/level_{self.spec.level:02d}/{TICKET}"
        if self.kind == "rewind":
            return f"{self.folder()}/run/{FINAL}"
        return f"{self.folder()}/{TICKET}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)


def job_key(kind: str, readable: str, identity: dict) -> str:
    return f"{kind}-{_safe(readable)}-{identity_hash(identity, 10)}"


def _readable(*parts: str) -> str:
    """A job's readable name: its non-empty parts joined by '-'."""
    return "-".join(p for p in parts if p)


class _Graph:
    def __init__(self, root=None) -> None:
        self.jobs: dict[str, Job] = {}
        self.root = root  # the study folder, where jobs named the earlier way may exist

    def add(self, spec: JobSpec, readable: str, deps=(), row=None, cost=None, env=None, legacy=None) -> Job:
        """Add a job; ``legacy``: the readable name earlier versions gave it (with empty fields, such as
        ``random---L01``), kept where a job folder of that name exists so that its work is not redone."""
        kind = spec.kind
        identity = {"kind": kind, **spec.identity()}
        key = job_key(kind, readable, identity)
        if legacy is not None and legacy != readable and self.root is not None:
            old = job_key(kind, legacy, identity)
            if (self.root / JOBS_DIR / old).is_dir() and not (self.root / JOBS_DIR / key).is_dir():
                key = old
        if key not in self.jobs:
            self.jobs[key] = Job(key, kind, spec, tuple(deps), row or {}, cost or {}, env or {})
        return self.jobs[key]


def _training(study: Study) -> dict:
    """The training settings that make a run what it is (seed added per job)."""
    from ettcli.settings import NOT_IDENTITY

    return {"dataset": study.dataset, **{k: v for k, v in study.train.items() if k not in NOT_IDENTITY}}


def schedule(study: Study) -> dict:
    """Iterations per epoch, total iterations, batch, test images: for the cost estimates."""
    from ettcli.data import DATASETS
    from ettcli.recipe import recipe_for

    ds = DATASETS[study.dataset]
    family = study.sources[0].spec.family if study.sources else None
    recipe = recipe_for(ds.name, family, study.train.get("recipe"))
    n = study.train.get("subset") or ds.train_size
    batch = study.train.get("batch_size") or recipe.batch_size
    full, rest = divmod(n, batch)
    per_epoch = full + (1 if rest else 0)
    epochs = study.train.get("epochs") or recipe.epochs
    return {"per_epoch": per_epoch, "total": epochs * per_epoch, "batch": batch, "test": ds.test_size, "epochs": epochs,
            "train": n}  # fmt: skip


def _rewind_of(study: Study, spec, rewind: str | None) -> str:
    from ettcli.recipe import FAMILY_DEFAULTS

    return rewind or str(FAMILY_DEFAULTS.lookup(spec.family).rewind)


def plan_jobs(study: Study) -> dict[str, Job]:
    """Every job of the study, each after the jobs it depends on (insertion order is a topological order)."""
    from ettcli.steps import parse_step

    g = _Graph(study.out)
    sched = schedule(study)
    per_epoch, total = sched["per_epoch"], sched["total"]
    keep = 1.0 - study.imp.rate

    def cost(arch, start: int, density: float, extra_steps: int = 0) -> dict:
        steps = total - start + extra_steps
        return {
            "arch": arch.name,
            "num_classes": study.num_classes,
            "images": steps * sched["batch"],
            "density": density,
            "eval_images": sched["test"] * -(-steps // per_epoch),
        }

    def settings(seed: int) -> dict:
        return {**_training(study), "seed": seed}

    # IMP chains: one per network (sources, and targets when imp.targets), level by level
    imp_level: dict[tuple[str, int], Job] = {}  # (network name, level) -> the job whose folder holds that level
    for label, spec, ticket, levels, rewind in study.imp_networks():
        rw = _rewind_of(study, spec, rewind)
        if ticket is not None:
            from ettcli.ticket import read_ticket

            source = {"fingerprint": read_ticket(ticket).fingerprint()}
        else:
            source = {"arch": spec.name, "num_classes": study.num_classes, "init_seed": study.imp.init_seed}
        identity = {
            "source": source,
            "rate": study.imp.rate,
            "rewind": rw,
            "scope": study.imp.scope,
            "settings": settings(study.imp.seed),
        }
        folder = f"{IMP_DIR}/{_safe(label)}-{identity_hash(identity, 10)}"
        rw_its = parse_step(rw).iterations(per_epoch)
        prev = None
        for level in range(1, levels + 1):
            dense_part = total if level == 1 else 0
            c = cost(spec, rw_its, keep**level, extra_steps=dense_part)
            c["dense_images"] = dense_part * sched["batch"]
            job = g.add(
                ImpJob(**identity, level=level, folder=folder),
                f"{label}-L{level:02d}",
                deps=[prev.key] if prev else [],
                row={"target": spec.name, "method": "imp", "network": label},
                cost=c,
                env={"source_ticket": str(ticket)} if ticket is not None else {},
            )
            imp_level[(label, level)] = job
            prev = job

    rewinds = {}
    for tgt in study.targets:
        t = tgt.name
        if study.baselines.methods:
            rw = _rewind_of(study, tgt, study.imp.rewind)
            rewinds[t] = g.add(
                RewindJob(
                    arch=t,
                    num_classes=study.num_classes,
                    init_seed=study.imp.init_seed,
                    rewind=rw,
                    settings=settings(study.imp.seed),
                ),  # fmt: skip
                t,
                row={"target": t},
                cost=cost(tgt, total - parse_step(rw).iterations(per_epoch), 1.0),
            )
        if study.dense:
            for seed in study.seeds:
                g.add(
                    DenseJob(
                        arch=t, num_classes=study.num_classes, init_seed=study.imp.init_seed, settings=settings(seed)
                    ),  # fmt: skip
                    f"{t}-s{seed}",
                    row={"target": t, "method": "dense", "level": 0, "seed": seed},
                    cost=cost(tgt, 0, 1.0),
                )

    lmc = study.lmc

    def train(ticket_job: Job, ticket_path: str, row: dict, arch, level: int, start: int) -> None:
        fields = (row["target"], row["method"], row.get("source") or "", row.get("variant") or "", f"L{level:02d}")
        readable, legacy = _readable(*fields), "-".join(fields)
        trained: dict[int, tuple[Job, str]] = {}  # seed -> (the job that trains it, its final weights)
        for seed in study.seeds:
            if ticket_job.kind == "imp" and seed == study.imp.seed:
                # IMP's own training of this level is the run with its seed
                trained[seed] = (ticket_job, f"{ticket_job.spec.folder}/level_{level:02d}/{FINAL}")
                continue
            j = g.add(
                TrainJob(ticket=ticket_job.key, ticket_path=ticket_path, settings=settings(seed)),
                f"{readable}-s{seed}",
                deps=[ticket_job.key],
                row={**row, "level": level, "seed": seed},
                cost=cost(arch, start, keep**level),
                legacy=f"{legacy}-s{seed}",
            )
            trained[seed] = (j, f"{j.folder()}/run/{FINAL}")
        if lmc is None or row["method"] not in lmc.methods or level not in lmc.levels:
            return
        (ja, pa), (jb, pb) = (trained[s] for s in lmc.seeds)
        images = lmc.alphas * ((lmc.bn_batches * sched["batch"] if lmc.bn_reset else 0) + sched["test"]
                               + min(lmc.train_images, sched["train"]))  # fmt: skip
        g.add(
            LmcJob(
                a=ja.key,
                a_path=pa,
                b=jb.key,
                b_path=pb,
                seeds=list(lmc.seeds),
                settings=_training(study),
                **{k: v for k, v in asdict(lmc).items() if k not in ("methods", "levels", "seeds")},
            ),
            f"{readable}-s{lmc.seeds[0]}-s{lmc.seeds[1]}",
            deps=[ja.key, jb.key],
            row={**row, "level": level},
            cost={**cost(arch, total, keep**level), "eval_images": images},
            legacy=f"{legacy}-s{lmc.seeds[0]}-s{lmc.seeds[1]}",
        )

    for tgt in study.targets:
        t = tgt.name
        rw_its = parse_step(_rewind_of(study, tgt, study.imp.rewind)).iterations(per_epoch)
        refs: list[tuple[Job, dict, int]] = []  # tickets the baselines are matched to
        for level in study.levels:
            if study.imp.targets:
                j = imp_level[(t, level)]
                row = {"target": t, "method": "imp"}
                train(j, j.output(), row, tgt, level, rw_its)
                if study.baselines.like == "imp":
                    refs.append((j, {"like": "imp"}, level))
            for src in study.sources:
                for v in study.transfers.get((src.label, t), ()):
                    up = imp_level[(src.label, level)]
                    j = g.add(
                        TransferJob(
                            ticket=up.key, ticket_path=up.output(), level=level, target=list(tgt.stages), **asdict(v)
                        ),  # fmt: skip
                        f"{t}-from-{src.label}-L{level:02d}-{v.label}",
                        deps=[up.key],
                        row={"target": t},
                    )
                    row = {"target": t, "method": "ett", "source": src.label, "variant": v.label}
                    train(j, j.output(), row, tgt, level, rw_its)
                    if study.baselines.like == "transfers":
                        refs.append((j, {"like": "ett", "like_source": src.label, "like_variant": v.label}, level))
        for ref, like, level in refs:
            for method in study.baselines.methods:
                b = study.baselines
                like_of = (like.get("like_source", "imp"), like.get("like_variant", ""))
                fields = (t, method, f"L{level:02d}", "like", *like_of)
                j = g.add(
                    PruneJob(
                        ticket=rewinds[t].key,
                        ticket_path=rewinds[t].output(),
                        like=ref.key,
                        like_path=ref.output(),
                        method=method,
                        match=b.match,
                        seed=b.seed,
                        samples_per_class=b.samples_per_class,
                        dataset=study.dataset,
                    ),  # fmt: skip
                    _readable(*fields),
                    deps=[rewinds[t].key, ref.key],
                    row={"target": t},
                    legacy="-".join(fields),
                )
                train(j, j.output(), {"target": t, "method": method, **like}, tgt, level, rw_its)
    return g.jobs


def describe(job: Job) -> str:
    """A short human description of a job, for logs and progress."""
    r, s = job.row, job.spec
    if isinstance(s, ImpJob):
        return f"IMP {r.get('network')} level {s.level}"
    if isinstance(s, TransferJob):
        return f"transfer level {s.level} to {r['target']} ({s.label})"
    if isinstance(s, PruneJob):
        return f"{s.method} on {r['target']}"
    if job.kind == "rewind":
        return f"rewind point of {r['target']}"
    if job.kind == "dense":
        return f"dense {r['target']} seed {r['seed']}"
    if job.kind == "lmc":
        src = f" <- {r['source']}" if r.get("source") else ""
        return f"LMC {r['method']}{src} on {r['target']} level {r['level']} (seeds {s.seeds[0]}, {s.seeds[1]})"
    src = f" <- {r['source']}" if r.get("source") else ""
    return f"train {r['method']}{src} on {r['target']} level {r['level']} seed {r['seed']}"
