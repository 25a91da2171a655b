"""Sparsity counting, in one place: kept and total prunable weights per tensor, per stage and globally.

Sparsity is the fraction of prunable weights whose mask is 0 (0.0 for a dense tensor); density is the
fraction kept. A :class:`SparsityReport` is built from an architecture and the kept count of each masked
tensor, so the same type describes a ticket (:meth:`ettcli.ticket.Ticket.sparsity_report`), the target of a
planned transform before it is built (:func:`ettcli.transform.predict_sparsity`) and what ``ett inspect``
shows. Numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ettcli.arch import ArchSpec


@dataclass(frozen=True)
class Count:
    """Kept and total weights of some prunable tensors."""

    kept: int
    total: int

    @property
    def pruned(self) -> int:
        return self.total - self.kept

    @property
    def density(self) -> float:
        return self.kept / self.total if self.total else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def __add__(self, other: Count) -> Count:
        return Count(self.kept + other.kept, self.total + other.total)

    @staticmethod
    def sum(counts: Iterable[Count]) -> Count:
        out = Count(0, 0)
        for c in counts:
            out = out + c
        return out


@dataclass(frozen=True)
class SparsityReport:
    """Counts of one architecture's prunable tensors: per tensor (module order), per stage, and globally.

    ``stage_counts[s]`` covers the units of stage ``s``; stem and head count only in the global figures.
    """

    arch: str
    tensors: Mapping[str, Count]
    stage_counts: tuple[Count, ...]
    count: Count

    @staticmethod
    def of(spec: ArchSpec, kept: Mapping[str, int]) -> SparsityReport:
        """Count ``spec``'s prunable tensors; ``kept`` gives the kept entries of masked ones (others are dense)."""
        tensors: dict[str, Count] = {}
        stages = [Count(0, 0)] * len(spec.stages)
        for name, t in spec.tensors.items():
            if not t.prunable:
                continue
            total = 1
            for d in t.shape:
                total *= d
            c = Count(kept.get(name, total), total)
            tensors[name] = c
            if t.stage is not None:
                stages[t.stage] = stages[t.stage] + c
        return SparsityReport(spec.name, tensors, tuple(stages), Count.sum(tensors.values()))

    def of_names(self, names: Iterable[str]) -> Count:
        """The counts over some prunable tensors."""
        return Count.sum(self.tensors[n] for n in names)

    @property
    def kept(self) -> int:
        return self.count.kept

    @property
    def total(self) -> int:
        return self.count.total

    @property
    def sparsity(self) -> float:
        return self.count.sparsity

    @property
    def density(self) -> float:
        return self.count.density

    @property
    def stages(self) -> tuple[float, ...]:
        """Sparsity of each stage's units."""
        return tuple(c.sparsity for c in self.stage_counts)
