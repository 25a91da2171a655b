"""The kinds of study job and each kind's spec: what makes a job what it is, as one frozen dataclass per kind.

:mod:`ettcli.study.graph` makes the specs and names each job by a hash of ``{"kind": KIND, **spec}``;
``job.json`` holds the spec as JSON (:meth:`JobSpec.identity`), and :mod:`ettcli.study.runner` reads it back
with :func:`spec_of` and runs the kind's function. A spec also reads as a mapping of its fields, so
``{"kind": spec.kind, **spec}`` is its identity. Torch-free.

Paths (``*_path``, ``folder``) are relative to the study folder; ``ticket``, ``like``, ``a`` and ``b`` are the
keys of the jobs that make those inputs, so a key covers everything upstream. ``settings`` is a
:class:`~ettcli.train.TrainSettings` as a dict, without the fields that do not change a result (data root,
workers, threads).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from ettcli.errors import EttError


@dataclass(frozen=True)
class JobSpec(Mapping):
    """The identity of one job: its settings and its inputs (JSON values only)."""

    kind: ClassVar[str]

    def identity(self) -> dict:
        """The spec as the JSON dict that ``job.json`` holds and the job's key hashes (with its kind)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> JobSpec:
        names = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping) or set(data) != names:
            raise EttError(f"not a {cls.kind} job's spec (expected the fields {', '.join(sorted(names))})")
        return cls(**data)

    def __getitem__(self, name: str):
        if name not in self:
            raise KeyError(name)
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return any(f.name == name for f in fields(self))

    def __iter__(self) -> Iterator[str]:
        return (f.name for f in fields(self))

    def __len__(self) -> int:
        return len(fields(self))


@dataclass(frozen=True)
class ImpJob(JobSpec):
    """IMP on one network up to ``level`` (the first job holds the dense level 0 and level 1), in ``folder``."""

    kind: ClassVar[str] = "imp"
    source: dict  # {"fingerprint": ...} of a given ticket, or {"arch", "num_classes", "init_seed"} to initialise
    rate: float
    rewind: str
    scope: str
    settings: dict
    level: int
    folder: str


@dataclass(frozen=True)
class RewindJob(JobSpec):
    """A target trained dense from its initialisation to ``rewind``: the rewind-point weights baselines prune."""

    kind: ClassVar[str] = "rewind"
    arch: str
    num_classes: int
    init_seed: int
    rewind: str
    settings: dict


@dataclass(frozen=True)
class TransferJob(JobSpec):
    """A source's level-``level`` ticket stretched or squeezed to the ``target`` stages, as one variant says."""

    kind: ClassVar[str] = "transfer"
    ticket: str
    ticket_path: str
    level: int
    target: list
    label: str
    verb: str
    preset: str | None = None
    mapping: str | None = None
    random_copies: int | None = None


@dataclass(frozen=True)
class PruneJob(JobSpec):
    """A baseline of a target's rewind weights (``ticket``), matched to the ticket ``like``."""

    kind: ClassVar[str] = "prune"
    ticket: str
    ticket_path: str
    like: str
    like_path: str
    method: str
    match: str
    seed: int
    samples_per_class: int
    dataset: str


@dataclass(frozen=True)
class TrainJob(JobSpec):
    """One ticket trained from its rewind step with the seed in ``settings``."""

    kind: ClassVar[str] = "train"
    ticket: str
    ticket_path: str
    settings: dict


@dataclass(frozen=True)
class DenseJob(JobSpec):
    """A target trained dense from its initialisation: the reference accuracy."""

    kind: ClassVar[str] = "dense"
    arch: str
    num_classes: int
    init_seed: int
    settings: dict


@dataclass(frozen=True)
class LmcJob(JobSpec):
    """The linear path between two trainings (``a``, ``b``) of one ticket with the two ``seeds``."""

    kind: ClassVar[str] = "lmc"
    a: str
    a_path: str
    b: str
    b_path: str
    seeds: list
    settings: dict
    alphas: int
    bn_batches: int
    bn_reset: bool
    bn_data: str
    train_images: int


SPECS: dict[str, type[JobSpec]] = {
    cls.kind: cls for cls in (ImpJob, RewindJob, TransferJob, PruneJob, TrainJob, DenseJob, LmcJob)
}
KINDS = tuple(SPECS)


def spec_of(job: Mapping) -> JobSpec:
    """The typed spec of a job as ``job.json`` holds it (``kind`` and ``spec``)."""
    cls = SPECS.get(job.get("kind"))
    if cls is None:
        raise EttError(f"unknown job kind {job.get('kind')!r}; choose one of {', '.join(KINDS)}")
    return cls.from_dict(job.get("spec"))
