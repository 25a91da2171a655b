"""Selection: how many weights survive where, and which ones.

Scores are kept apart from allocation. A pruning method (:mod:`ettcli.prune_methods`) scores every weight or
makes its masks without scores; this module decides how many weights survive and where:

* exact counts: ``sparsity=S`` keeps ``round((1 - S) * N)`` of the N prunable weights; ``like=REF`` keeps
  REF's exact global count (``match="global"``) or REF's exact count in every tensor (``"layerwise"``); an
  IMP level removes ``ceil(rate * remaining)`` of the weights still kept (:func:`imp_target`);
* exact top-k, over all tensors at once or per tensor, with a deterministic tie-break: equal scores keep
  their order (tensor order as the network defines it, then flat index), the earlier one survives;
* uniform and ERK per-layer densities for a global count (ERK as RigL defines it), as integer counts that
  sum exactly to the target.

Numpy only: importing this module never imports torch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ettcli.errors import EttError
from ettcli.mask import Mask

if TYPE_CHECKING:
    from ettcli.ticket import Ticket

MATCHES = ("global", "layerwise")


# --- counting -------------------------------------------------------------------------------------------------
def keep_count(total: int, sparsity: float) -> int:
    """The number of weights that ``sparsity`` keeps out of ``total``: ``round((1 - sparsity) * total)``."""
    if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise EttError(
            f"sparsity {sparsity} is outside [0, 1): give the fraction of prunable weights to remove, e.g. 0.9"
        )
    return int(round((1.0 - sparsity) * total))


def topk_flat(values: np.ndarray, k: int) -> np.ndarray:
    """A bool array that keeps exactly the ``k`` largest of the 1-d ``values``; among equal values the earlier wins.

    The same result as a stable sort of ``-values`` cut at ``k``, in linear time: find the k-th largest value,
    keep everything above it, then the first of those equal to it. NaN counts as -inf.
    """
    n = values.size
    keep = np.zeros(n, dtype=bool)
    if k <= 0:
        return keep
    if k >= n:
        keep[:] = True
        return keep
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).any():
        values = np.where(np.isnan(values), -np.inf, values)
    cand = values[values > -np.inf]
    if cand.size <= k:  # every finite score survives, and the first -inf ones fill up
        keep = values > -np.inf
        keep[np.flatnonzero(~keep)[: k - cand.size]] = True
        return keep
    kth = _kth_largest(cand, k)
    keep = values > kth
    need = k - int(np.count_nonzero(keep))
    keep[np.flatnonzero(values == kth)[:need]] = True
    return keep


def _kth_largest(values: np.ndarray, k: int) -> float:
    """The k-th largest of ``values`` (1 <= k <= size)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        # where torch is loaded anyway (the scorers), its selection is used: numpy's introselect slows down
        # 10-50x when many values equal the k-th (a dead layer's zero scores), torch's does not
        return torch.kthvalue(torch.from_numpy(values), values.size - k + 1).values.item()
    return np.partition(values, values.size - k)[values.size - k]


def global_topk_masks(scores: Mapping[str, np.ndarray], keep: int) -> dict[str, Mask]:
    """Keep exactly ``keep`` entries with the largest scores over all tensors.

    Ties are broken deterministically: by tensor order as given, then by flat index (earlier wins).
    """
    total = sum(np.size(s) for s in scores.values())
    if not 0 <= keep <= total:
        raise EttError(f"cannot keep {keep} of {total} weights")
    flat = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for s in scores.values()]) if scores else None
    keep_flat = topk_flat(flat, keep) if flat is not None else np.zeros(0, dtype=bool)
    out, pos = {}, 0
    for name, s in scores.items():
        size = np.size(s)
        out[name] = Mask(keep_flat[pos : pos + size].reshape(np.shape(s)))
        pos += size
    return out


def layerwise_topk_masks(scores: Mapping[str, np.ndarray], counts: Mapping[str, int]) -> dict[str, Mask]:
    """Keep exactly ``counts[name]`` entries with the largest scores within each tensor (earlier index wins ties)."""
    out = {}
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if not 0 <= counts[name] <= s.size:
            raise EttError(f"cannot keep {counts[name]} of {s.size} weights in {name}")
        out[name] = Mask(topk_flat(s.reshape(-1), counts[name]).reshape(s.shape))
    return out


def magnitude_masks(ticket, sparsity: float, base: dict[str, Mask] | None = None) -> dict[str, Mask]:
    """One-shot global magnitude pruning of a ticket's prunable tensors to ``sparsity`` (fraction pruned).

    With ``base`` masks, already-pruned weights stay pruned (score -inf), as in IMP.
    """
    scores = {}
    for name in ticket.prunable():
        s = np.abs(ticket.array(name).astype(np.float64))
        if base and name in base:
            s = np.where(base[name].array, s, -np.inf)
        scores[name] = s
    total = sum(s.size for s in scores.values())
    return global_topk_masks(scores, keep_count(total, sparsity))


def counts_from_densities(sizes: Mapping[str, int], densities: Mapping[str, float], keep: int) -> dict[str, int]:
    """Integer kept counts near ``density * size`` per tensor that sum exactly to ``keep``.

    Each tensor first gets ``floor(density * size)`` (within ``[0, size]``); the weights still missing (or
    too many) go to (come from) the tensors with the largest (smallest) remainders, earlier tensors first
    among equal remainders, one per tensor per pass.
    """
    names = list(sizes)
    total = sum(sizes.values())
    if not 0 <= keep <= total:
        raise EttError(f"cannot keep {keep} of {total} weights")
    ideal = {n: min(max(densities[n], 0.0), 1.0) * sizes[n] for n in names}
    counts = {n: min(sizes[n], max(0, math.floor(ideal[n]))) for n in names}
    left = keep - sum(counts.values())
    while left:
        if left > 0:
            room = [n for n in names if counts[n] < sizes[n]]
            room.sort(key=lambda n: -(ideal[n] - counts[n]))  # stable: earlier tensors first among equals
            step = 1
        else:
            room = [n for n in names if counts[n] > 0]
            room.sort(key=lambda n: ideal[n] - counts[n])
            step = -1
        for n in room[: abs(left)]:
            counts[n] += step
        left -= step * min(abs(left), len(room))
    return counts


def uniform_densities(sizes: Mapping[str, int], keep: int) -> dict[str, float]:
    """The same density ``keep / total`` in every tensor."""
    total = sum(sizes.values())
    return {n: keep / total if total else 1.0 for n in sizes}


def erk_densities(shapes: Mapping[str, tuple[int, ...]], sparsity: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel densities for a global ``sparsity``, as RigL's ``get_sparsities_erdos_renyi`` computes them.

    A tensor's density is ``eps * sum(shape) / prod(shape)`` (kernel dimensions included); ``eps`` is chosen
    so that the kept count is that of the uniform sparsity (each tensor contributing ``size - floor(sparsity
    * size)``). While that makes some density exceed 1, the tensors with the largest raw density become dense
    and ``eps`` is solved again for the rest.
    """
    dense: set[str] = set()
    while True:
        rhs = 0.0
        divisor = 0.0
        raw: dict[str, float] = {}
        for name, shape in shapes.items():
            n = math.prod(shape)
            zeros = math.floor(sparsity * n)
            if name in dense:
                rhs -= zeros
            else:
                rhs += n - zeros
                raw[name] = sum(shape) / n
                divisor += raw[name] * n
        if not raw:
            return {name: 1.0 for name in shapes}
        eps = rhs / divisor
        top = max(raw.values())
        if top * eps > 1:
            dense.update(name for name, p in raw.items() if p == top)
            continue
        return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}


# --- the target of one run ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """How many weights survive, globally or per tensor, over the tensors being pruned.

    ``total`` and ``keep`` count every prunable tensor of the network, those left dense (``dense``) included,
    so that they read as ``ett inspect`` reports sparsity. Selection happens over ``sizes`` (the pruned
    tensors, in network order): ``keep - dense_total`` weights globally, or ``counts[name]`` per tensor.
    """

    sizes: dict[str, int]  # pruned tensors -> number of weights
    shapes: dict[str, tuple[int, ...]]
    total: int  # all prunable weights, dense ones included
    keep: int  # kept prunable weights, dense ones included
    dense: tuple[str, ...] = ()  # prunable tensors left dense
    counts: dict[str, int] | None = None  # per-tensor kept counts (layerwise), else None

    @property
    def dense_total(self) -> int:
        return self.total - sum(self.sizes.values())

    @property
    def keep_pruned(self) -> int:
        """Weights kept among the pruned tensors."""
        return self.keep - self.dense_total

    @property
    def sparsity(self) -> float:
        return 1.0 - self.keep / self.total if self.total else 0.0

    def with_counts(self, counts: Mapping[str, int]) -> Target:
        """The same global count, fixed per tensor (uniform and ERK allocate it this way)."""
        assert sum(counts.values()) == self.keep_pruned
        return replace(self, counts=dict(counts))

    def at(self, fraction: float) -> Target:
        """A point of the exponential schedule: density ``d ** fraction`` of the final density ``d``.

        Round k of n keeps ``round(N * d ** (k / n))`` of the N pruned weights (per tensor when layerwise);
        ``fraction == 1`` is exactly this target.
        """
        if fraction >= 1:
            return self
        if self.counts is not None:
            counts = {n: _scheduled(self.sizes[n], self.counts[n], fraction) for n in self.sizes}
            return replace(self, counts=counts, keep=self.dense_total + sum(counts.values()))
        pruned = sum(self.sizes.values())
        return replace(self, keep=self.dense_total + _scheduled(pruned, self.keep_pruned, fraction))

    def select(
        self, scores: Mapping[str, np.ndarray], invert: bool = False, allowed: Mapping[str, Mask] | None = None
    ) -> dict[str, Mask]:
        """Masks that keep the highest scores (the lowest with ``invert``), never a weight ``allowed`` prunes."""
        ranked = {}
        for name in self.sizes:
            s = np.asarray(scores[name], dtype=np.float64)
            if invert:
                s = -s
            if allowed is not None:
                s = np.where(allowed[name].array, s, -np.inf)
            ranked[name] = s
        if self.counts is not None:
            return layerwise_topk_masks(ranked, self.counts)
        return global_topk_masks(ranked, self.keep_pruned)


def _scheduled(size: int, keep: int, fraction: float) -> int:
    if size == 0:
        return 0
    return int(round(size * (keep / size) ** fraction))


def pruned_tensors(
    ticket: Ticket, ref: Ticket | None, exclude: Sequence[str] | None
) -> tuple[list[str], tuple[str, ...]]:
    """The prunable tensors to prune, in network order, and those left dense."""
    prunable = ticket.prunable()
    if exclude is None:
        default = ticket.arch.fam.left_dense(ticket.arch)  # e.g. open_lth's pruning_layers_to_ignore
        # a tensor REF prunes is pruned here too, whatever the family's default
        dense = [n for n in default if n in prunable and (ref is None or ref.mask(n).kept == ref.mask(n).numel)]
    else:
        dense = []
        for name in exclude:
            if name not in prunable:
                raise EttError(
                    f"--exclude {name}: not a prunable tensor of {ticket.arch.name}; "
                    f"prunable tensors are {', '.join(prunable[:4])}, ..."
                )
            dense.append(name)
    return [n for n in prunable if n not in dense], tuple(n for n in prunable if n in dense)


def make_target(
    ticket: Ticket, names: list[str], dense: Sequence[str], *, sparsity=None, ref=None, match="global"
) -> Target:
    """The exact counts: ``round((1 - sparsity) * N)`` globally, REF's global count, or REF's per-tensor counts."""
    shapes = {n: tuple(ticket.tensors[n].shape) for n in names}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total, _ = ticket.counts()
    dense_total = total - sum(sizes.values())
    if match == "layerwise":
        for n in dense:
            if ref.mask(n).kept != ref.mask(n).numel:
                raise EttError(f"--like: REF prunes {n}, which --exclude leaves dense; drop it from --exclude")
        counts = {n: ref.mask(n).kept for n in names}
        return Target(sizes, shapes, total, dense_total + sum(counts.values()), tuple(dense), counts)
    keep = keep_count(total, sparsity) if ref is None else ref.counts()[1]
    if keep == 0 and ref is None:
        raise EttError(
            f"sparsity {sparsity} keeps round((1 - S) x {total:,}) = 0 of {total:,} weights, an empty network; "
            f"give a sparsity of at most {1 - 0.5 / total:.10g} to keep at least one weight"
        )
    if keep < dense_total:
        raise EttError(
            f"keeping {keep:,} of {total:,} weights is impossible with {', '.join(dense)} left dense "
            f"({dense_total:,} weights); lower the sparsity or pass --exclude none"
        )
    return Target(sizes, shapes, total, keep, tuple(dense))


def imp_target(masks: Mapping[str, Mask], rate: float, scope: str) -> Target:
    """One IMP level over the tensors of ``masks``: remove ``ceil(rate * remaining)`` of the weights they keep.

    ``scope="global"`` counts the remaining weights over all tensors together, ``"layerwise"`` in each tensor.
    Select with ``allowed=masks`` so that already-pruned weights stay pruned and masks only shrink.
    """
    shapes = {n: tuple(m.shape) for n, m in masks.items()}
    sizes = {n: m.numel for n, m in masks.items()}
    total = sum(sizes.values())
    if scope == "layerwise":
        counts = {n: m.kept - math.ceil(rate * m.kept) for n, m in masks.items()}
        return Target(sizes, shapes, total, sum(counts.values()), (), counts)
    remaining = sum(m.kept for m in masks.values())
    return Target(sizes, shapes, total, remaining - math.ceil(rate * remaining))
