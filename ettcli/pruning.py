"""Pruning: how many weights survive where, the registry of methods, and :func:`prune`.

Scores are kept apart from allocation. A method either scores every weight (magnitude, SNIP, GraSP,
SynFlow) or makes its masks without scores (the random baselines, reinit); this module decides how many
weights survive and where:

* exact counts: ``sparsity=S`` keeps ``round((1 - S) * N)`` of the N prunable weights; ``like=REF`` keeps
  REF's exact global count (``match="global"``) or REF's exact count in every tensor (``"layerwise"``);
* exact top-k, over all tensors at once or per tensor, with a deterministic tie-break: equal scores keep
  their order (tensor order as the network defines it, then flat index), the earlier one survives;
* uniform and ERK per-layer densities for a global count (ERK as RigL defines it), as integer counts that
  sum exactly to the target.

Numpy only: importing this module never imports torch. Methods name their function by module path, and
the torch-based scorers (``ettcli.scores``) load on first use.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ettcli.errors import EttError, warn
from ettcli.mask import Mask
from ettcli.registry import Registry

if TYPE_CHECKING:
    from ettcli.ticket import Ticket

MATCHES = ("global", "layerwise")
BN_MODES = ("train", "eval")


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


# --- the methods ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """A pruning method: what it is, what it needs, and where its function lives.

    ``func`` is ``"module:function"``, loaded on first use; the function takes a :class:`Job` and returns
    masks for ``job.target.sizes`` (or the tensors of the mask it copies).
    """

    name: str
    summary: str  # one line, for the command list
    definition: str  # the full definition, for --help
    example: str  # one example command line
    func: str
    data: bool = False  # reads training images (--dataset, --data-root, --samples-per-class)
    network: bool = False  # runs the network: BatchNorm mode applies, --dataset gives the input shape
    bn: str | None = None  # default BatchNorm mode while scoring (train: batch statistics; eval: running ones)
    scored: bool = True  # scores weights: the sanity ablations (--invert, --shuffle, --reinit) apply
    seeded: bool = False  # uses --seed
    matches: tuple[str, ...] = MATCHES  # the --match modes that make sense
    layerwise_like: bool = False  # with --like, match REF per tensor unless told otherwise
    copies_mask: bool = False  # takes REF's (or TICKET's own) mask as it is: no --sparsity, no --match
    fresh_weights: bool = False  # writes freshly initialised weights (seed --seed) under the masks

    def load(self) -> Callable[[Job], dict[str, Mask]]:
        module, _, attr = self.func.partition(":")
        return getattr(importlib.import_module(module), attr)


METHODS: Registry[Method] = Registry("pruning method")


def register(method: Method) -> Method:
    """Add a pruning method (a name registers once); the CLI makes one ``ett prune NAME`` command per method."""
    return METHODS.register(method.name, method)


register(
    Method(
        "magnitude",
        "Keep the largest |w| of TICKET's unmasked rewind-point weights.",
        "Scores every prunable weight by |w| (TICKET's unmasked rewind-point weights) and keeps the largest, "
        "over all tensors at once (or per tensor with --match layerwise). One shot, no data.",
        "ett prune magnitude r20_rewind.safetensors --like r20_level10.safetensors -o r20_magnitude.safetensors",
        "ettcli.pruning:magnitude",
    )
)
register(
    Method(
        "random",
        "Random masks: REF's mask shuffled within each tensor, or uniformly random at --sparsity.",
        "With --like REF, shuffles REF's mask within each tensor (the same count in every tensor; --match "
        "global instead places REF's global count uniformly at random over all tensors). With --sparsity, keeps "
        "round((1 - S) * N) weights chosen uniformly at random over all tensors. Seeded by --seed. The weights "
        "are TICKET's unmasked rewind-point weights.",
        "ett prune random r20_rewind.safetensors --like r20_level10.safetensors --seed 1 -o r20_random.safetensors",
        "ettcli.pruning:random_masks",
        scored=False,
        seeded=True,
        layerwise_like=True,
    )
)
register(
    Method(
        "reinit",
        "REF's (or TICKET's own) mask on freshly initialised weights.",
        "Copies the mask of --like REF (of TICKET itself without --like) and puts it on freshly initialised "
        "weights: the initialisation of `ett init` (Kaiming normal, BatchNorm gamma ~ U(0, 1)) with seed --seed. "
        "The rewind step stays TICKET's.",
        "ett prune reinit r20_rewind.safetensors --like r20_level10.safetensors --seed 1 -o r20_reinit.safetensors",
        "ettcli.pruning:copy_masks",
        scored=False,
        seeded=True,
        matches=(),
        copies_mask=True,
        fresh_weights=True,
    )
)
register(
    Method(
        "snip",
        "SNIP (Lee et al. 2019): keep the largest |g * w| of the cross-entropy on a batch of training images.",
        "Scores each weight by |g * w|, g the gradient of the mean cross-entropy over one batch of "
        "--samples-per-class images of every class (the first ones of each class in the training split's order, "
        "normalised as in training, no augmentation), and keeps the largest. BatchNorm uses the batch's "
        "statistics (--bn train) unless --bn eval. Computed in float32, never under autocast; TICKET is not "
        "changed.",
        "ett prune snip r20_rewind.safetensors --like r20_level10.safetensors --data-root ~/data -o r20_snip.safetensors",
        "ettcli.scores:snip",
        data=True,
        network=True,
        bn="train",
    )
)
register(
    Method(
        "grasp",
        "GraSP (Wang et al. 2020): remove the largest S = -w * (H g), logits divided by T = 200.",
        "Scores each weight by S = -w * (H g): g the gradient of the mean cross-entropy of the logits divided by "
        "T = 200 over one batch of --samples-per-class images of every class (as for snip), H g the "
        "Hessian-gradient product by double backpropagation at the same temperature. Removes the weights with the "
        "largest S (keeps the smallest), which preserves gradient flow; the sign matters (grasp-abs is the "
        "|S| variant). BatchNorm uses the batch's statistics unless --bn eval. Computed in float32.",
        "ett prune grasp r20_rewind.safetensors --like r20_level10.safetensors --data-root ~/data -o r20_grasp.safetensors",
        "ettcli.scores:grasp",
        data=True,
        network=True,
        bn="train",
    )
)
register(
    Method(
        "grasp-abs",
        "GraSP by magnitude: keep the largest |w * (H g)| (the variant some reference code ran).",
        "The GraSP score without its sign: keeps the weights with the largest |w * (H g)|, with H g computed as "
        "for grasp (T = 200, the same batch and BatchNorm mode). A different method from grasp, named apart.",
        "ett prune grasp-abs r20_rewind.safetensors --like r20_level10.safetensors --data-root ~/data -o r20_grasp_abs.safetensors",
        "ettcli.scores:grasp_abs",
        data=True,
        network=True,
        bn="train",
    )
)
register(
    Method(
        "synflow",
        "SynFlow (Tanaka et al. 2020): data-free, 100 rounds of |w * dR/dw| on the absolute-valued network.",
        "Data-free. In float64 and BatchNorm eval mode, every parameter and buffer (running statistics "
        "included) is replaced by its absolute value; R is the sum of the outputs for an all-ones input of the "
        "dataset's image shape (batch 1), and each weight scores |w * dR/dw|. 100 rounds on an exponential "
        "schedule: round k keeps round(N * d ** (k / 100)) weights (d the target density, the last round exactly "
        "the target), the masks applied before each round; the written weights keep their signs. On a network with "
        "LayerNorm and attention (cifar_vit and the other Transformer families) this definition is applied as "
        "written, but its guarantee does not hold: SynFlow's conservation argument needs a positively homogeneous "
        "network, and LayerNorm (which divides by the activations' spread) and softmax attention are not, so the "
        "scores are not path products there; an all-ones input also makes every patch token alike, and a "
        "zero-initialised classifier (torchvision's ViT head) scores every weight 0, so prune rewind-point weights.",
        "ett prune synflow r20_rewind.safetensors --like r20_level10.safetensors -o r20_synflow.safetensors",
        "ettcli.scores:synflow",
        network=True,
        bn="eval",
    )
)
register(
    Method(
        "uniform",
        "Random masks with the same sparsity in every tensor.",
        "Every pruned tensor gets the global density (integer counts that sum exactly to the target), its kept "
        "weights placed uniformly at random (seed --seed).",
        "ett prune uniform r20_rewind.safetensors --sparsity 0.9 -o r20_uniform.safetensors",
        "ettcli.pruning:uniform_masks",
        scored=False,
        seeded=True,
        matches=("global",),
    )
)
register(
    Method(
        "erk",
        "Random masks at Erdos-Renyi-Kernel per-layer densities (RigL).",
        "Per-tensor densities proportional to sum(shape) / prod(shape) (kernel dimensions included), scaled to the "
        "global target; tensors that would exceed density 1 stay dense and the rest are rescaled, as RigL does. "
        "Integer counts sum exactly to the target; kept weights placed uniformly at random (seed --seed).",
        "ett prune erk r20_rewind.safetensors --sparsity 0.9 -o r20_erk.safetensors",
        "ettcli.pruning:erk_masks",
        scored=False,
        seeded=True,
        matches=("global",),
    )
)


# --- one run ------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """Everything a method function may need for one run."""

    method: Method
    ticket: Ticket
    ref: Ticket | None
    target: Target | None  # None only for a method that copies a mask
    seed: int = 0
    bn: str | None = None
    invert: bool = False
    dataset: object = None  # DatasetSpec of the network's data (image shape; images for data methods)
    data: object = None  # data root folder, or an (images, labels) pair of arrays
    samples_per_class: int = 10
    device: str = "cpu"
    download: bool = False

    @property
    def names(self) -> list[str]:
        return list(self.target.sizes) if self.target is not None else []

    def weights(self) -> dict[str, np.ndarray]:
        """TICKET's unmasked weights of the pruned tensors."""
        return {n: self.ticket.array(n) for n in self.names}

    def select(self, scores: Mapping[str, np.ndarray], allowed: Mapping[str, Mask] | None = None) -> dict[str, Mask]:
        return self.target.select(scores, invert=self.invert, allowed=allowed)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def magnitude(job: Job) -> dict[str, Mask]:
    return job.select({n: np.abs(w.astype(np.float64)) for n, w in job.weights().items()})


def random_masks(job: Job) -> dict[str, Mask]:
    rng = job.rng()
    target = job.target
    if target.counts is not None and job.ref is not None:
        # REF's mask shuffled within each tensor
        return {n: job.ref.mask(n).shuffled(rng) for n in target.sizes}
    if target.counts is not None:
        return _random_at_counts(target, rng)
    total = sum(target.sizes.values())
    flat = np.zeros(total, dtype=bool)
    flat[rng.permutation(total)[: target.keep_pruned]] = True
    out, pos = {}, 0
    for n, size in target.sizes.items():
        out[n] = Mask(flat[pos : pos + size].reshape(target.shapes[n]))
        pos += size
    return out


def uniform_masks(job: Job) -> dict[str, Mask]:
    t = job.target
    job.target = t.with_counts(counts_from_densities(t.sizes, uniform_densities(t.sizes, t.keep_pruned), t.keep_pruned))
    return _random_at_counts(job.target, job.rng())


def erk_masks(job: Job) -> dict[str, Mask]:
    t = job.target
    pruned = sum(t.sizes.values())
    densities = erk_densities(t.shapes, 1.0 - t.keep_pruned / pruned if pruned else 0.0)
    job.target = t.with_counts(counts_from_densities(t.sizes, densities, t.keep_pruned))
    return _random_at_counts(job.target, job.rng())


def _random_at_counts(target: Target, rng: np.random.Generator) -> dict[str, Mask]:
    """``target.counts[name]`` kept weights at uniformly random places in each tensor."""
    out = {}
    for n, size in target.sizes.items():
        flat = np.zeros(size, dtype=bool)
        flat[rng.permutation(size)[: target.counts[n]]] = True
        out[n] = Mask(flat.reshape(target.shapes[n]))
    return out


def copy_masks(job: Job) -> dict[str, Mask]:
    """REF's masks (TICKET's own without REF), as they are."""
    src = job.ref if job.ref is not None else job.ticket
    return {n: Mask(m.array.copy()) for n, m in src.masks.items()}


# --- the library entry ------------------------------------------------------------------------------------------
@dataclass
class Pruned:
    """The result of one run: the ticket, and what was asked of it (for the report)."""

    ticket: Ticket
    method: Method
    target: Target | None  # None where a mask is copied as it is
    ref: Ticket | None
    match: str | None  # "global" or "layerwise"; None where a mask is copied
    per_tensor_target: dict[str, int] = field(default_factory=dict)  # tensors whose count was fixed

    def rows(self) -> list[dict]:
        """Per prunable tensor: name, weights, kept, sparsity, target kept (None where only the global count is set)."""
        out = []
        for name in self.ticket.prunable():
            total, kept = self.ticket.counts([name])
            out.append(
                {
                    "tensor": name,
                    "weights": total,
                    "kept": kept,
                    "sparsity": 1.0 - kept / total if total else 0.0,
                    "target_kept": self.per_tensor_target.get(name),
                    "dense": name not in self.ticket.masks,
                }
            )
        return out

    @property
    def target_keep(self) -> int:
        return self.target.keep if self.target is not None else self.ticket.counts()[1]


def prune(
    ticket: Ticket | str | Path,
    method: str,
    *,
    sparsity: float | None = None,
    like: Ticket | str | Path | None = None,
    match: str | None = None,
    data: str | Path | tuple | None = None,
    download: bool = False,
    dataset: str | None = None,
    samples_per_class: int = 10,
    bn: str | None = None,
    seed: int = 0,
    invert: bool = False,
    shuffle: int | None = None,
    reinit: int | None = None,
    exclude: Sequence[str] | None = None,
    device: str = "cpu",
) -> Ticket:
    """Prune a ticket's unmasked rewind-point weights with one of the registered methods (``METHODS``).

    Examples::

        import ettcli
        ref = ettcli.read_ticket("r20_level10.safetensors")
        ettcli.prune("r20_rewind.safetensors", "snip", like=ref, data="~/data").save("r20_snip.safetensors")
        ettcli.prune("r20_rewind.safetensors", "magnitude", sparsity=0.9)

    Args:
        ticket: the ticket whose weights are pruned (a :class:`~ettcli.ticket.Ticket` or a path); its own masks
            are ignored (the method sees the unmasked weights), except by ``reinit`` without ``like``.
        method: a registered method: magnitude, random, reinit, snip, grasp, grasp-abs, synflow, uniform, erk.
        sparsity: fraction of prunable weights to remove, in [0, 1); ``round((1 - sparsity) * N)`` are kept.
        like: a reference ticket of the same architecture whose kept count is matched exactly (give this or
            ``sparsity``; ``reinit`` takes its mask as it is).
        match: ``"global"`` (REF's total kept count) or ``"layerwise"`` (REF's count in every tensor; needs
            ``like``). Default: global, except ``random`` with ``like``, which shuffles REF's mask per tensor.
        data: for snip and grasp, the data root folder (as ``ett train --data-root``; default ``$ETT_DATA``) or
            an ``(images, labels)`` pair: float32 NCHW images already normalised and int labels, used as is.
        download: fetch the dataset with torchvision's downloader into ``data`` first (CIFAR only).
        dataset: the dataset's registered name (default: TICKET's ``ett.dataset``, else its family's); it sets
            the scoring images and, for synflow, the input shape.
        samples_per_class: images per class in the scoring batch of snip and grasp: the first ones of each class
            in the training split's order, as one batch.
        bn: BatchNorm mode while scoring, ``"train"`` (batch statistics; snip and grasp default) or ``"eval"``
            (running statistics; synflow default). Scoring never changes TICKET.
        seed: seed of the random baselines' placement and of reinit's initialisation.
        invert: sanity ablation (scored methods): keep the lowest scores instead of the highest.
        shuffle: sanity ablation (scored methods): shuffle the result's mask within each tensor with this seed.
        reinit: sanity ablation (scored methods): put the result's mask on fresh weights initialised with this seed.
        exclude: prunable tensors to leave dense. Default: open_lth's for the family (a CIFAR VGG's ``fc.weight``),
            minus any tensor that ``like`` prunes; ``[]`` prunes every prunable tensor.
        device: where snip, grasp and synflow compute (``"cpu"`` or ``"cuda"``).

    Returns:
        A new ticket: TICKET's unmasked weights (fresh ones for reinit) with the new masks, and metadata that
        records the method and its settings (``ett.prune.*``), REF's sha256 (``ett.like_sha256``) and TICKET's
        rewind step.

    Raises:
        EttError: an unknown method, a sparsity outside [0, 1), both or neither of ``sparsity`` and ``like``,
            ``match="layerwise"`` without ``like``, a REF of another architecture, missing data.
    """
    return prune_run(
        ticket,
        method,
        sparsity=sparsity,
        like=like,
        match=match,
        data=data,
        download=download,
        dataset=dataset,
        samples_per_class=samples_per_class,
        bn=bn,
        seed=seed,
        invert=invert,
        shuffle=shuffle,
        reinit=reinit,
        exclude=exclude,
        device=device,
    ).ticket


def prune_run(
    ticket,
    method: str,
    *,
    sparsity=None,
    like=None,
    match=None,
    data=None,
    download=False,
    dataset=None,
    samples_per_class=10,
    bn=None,
    seed=0,
    invert=False,
    shuffle=None,
    reinit=None,
    exclude=None,
    device="cpu",
) -> Pruned:
    """:func:`prune`, returning the ticket together with its target (what the CLI reports)."""
    from ettcli.ticket import Ticket

    m = METHODS.lookup(method)
    settings = _check_settings(m, sparsity, like, match, bn, invert, shuffle, reinit, samples_per_class)
    tk = _as_ticket(ticket, "TICKET")
    ref = _as_ticket(like, "--like") if like is not None else None
    if ref is not None:
        check_like(tk, ref, str(like))
    ds = _dataset_for(tk, dataset) if m.network else None
    if m.copies_mask:
        src = ref if ref is not None else tk
        if not src.masks:
            raise EttError(
                f"{'--like ' + str(like) if ref is not None else 'TICKET'} has no masks to copy; "
                "reinit puts a ticket's mask on fresh weights: pass --like REF with a sparse ticket"
            )
        target = None
    else:
        names, dense = pruned_tensors(tk, ref, exclude)
        target = make_target(tk, names, dense, sparsity=sparsity, ref=ref, match=settings["match"])
    job = Job(m, tk, ref, target, seed, settings["bn"], invert, ds, data, samples_per_class, device, download)
    masks = m.load()(job)
    target = job.target  # uniform and ERK fix their per-tensor counts
    if m.copies_mask:
        per_tensor = {n: mk.kept for n, mk in masks.items()}
    else:
        per_tensor = dict(target.counts) if target.counts is not None else {}
    if shuffle is not None:
        rng = np.random.default_rng(shuffle)
        masks = {n: mk.shuffled(rng) for n, mk in masks.items()}

    _check_counts(masks, target)
    fresh = m.fresh_weights or reinit is not None
    tensors = dict(tk.tensors)
    if fresh:
        from ettcli.scores import fresh_weights
        from ettcli.stfile import Source

        init_seed = reinit if reinit is not None else seed
        tensors = {k: Source.of_array(v) for k, v in fresh_weights(tk.arch, init_seed).items()}
    else:
        _warn_masked_weights(tk, masks)
    if not m.copies_mask:
        _warn_revived(tk, masks, m.name)
    collapsed = [n for n, mk in masks.items() if mk.kept == 0 and mk.numel > 0]
    if collapsed:
        shown = ", ".join(collapsed[:5]) + (f" and {len(collapsed) - 5} more" if len(collapsed) > 5 else "")
        warn(f"layer collapse: {m.name} keeps no weight in {shown}; no signal passes through that layer")

    meta = _metadata(tk, ref, m, target, settings, sparsity, seed, invert, shuffle, reinit, samples_per_class, ds, data)
    if fresh:
        meta["ett.init"] = tk.arch.fam.init_name
        meta["ett.seed"] = str(reinit if reinit is not None else seed)
    out = Ticket(tensors, masks, meta, tk.spec, None)
    return Pruned(out, m, target, ref, settings["match"], per_tensor)


def _as_ticket(value, what: str) -> Ticket:
    from ettcli.ticket import Ticket, read_ticket

    if isinstance(value, Ticket):
        return value
    if isinstance(value, (str, Path)):
        return read_ticket(Path(value).expanduser())
    raise EttError(f"{what}: expected a Ticket or a path, got {type(value).__name__}")


def _check_settings(m: Method, sparsity, like, match, bn, invert, shuffle, reinit, samples_per_class) -> dict:
    """Refuse settings that contradict each other or the method; return the resolved match and BatchNorm mode."""
    if m.copies_mask:
        if sparsity is not None:
            raise EttError(f"{m.name} copies REF's (or TICKET's own) mask; --sparsity does not apply, give --like REF")
        if match is not None:
            raise EttError(f"{m.name} copies REF's mask as it is; --match does not apply")
    elif sparsity is not None and like is not None:
        raise EttError("give --sparsity S or --like REF, not both")
    elif sparsity is None and like is None:
        raise EttError("give --sparsity S (fraction of prunable weights to remove) or --like REF (match its count)")
    if sparsity is not None:
        keep_count(0, sparsity)  # range check only
    if match is not None and match not in MATCHES:
        raise EttError(f"--match {match}: choose global or layerwise")
    if match == "layerwise" and like is None:
        raise EttError("--match layerwise takes REF's per-tensor counts: it needs --like REF, not --sparsity")
    if match is not None and match not in m.matches:
        raise EttError(
            f"{m.name} sets its own per-tensor counts; --match {match} does not apply (it matches the global count)"
        )
    if bn is not None:
        if bn not in BN_MODES:
            raise EttError(f"--bn {bn}: choose train or eval")
        if not m.network:
            raise EttError(f"{m.name} does not run the network; --bn applies to snip, grasp, grasp-abs and synflow")
    if not m.scored and (invert or shuffle is not None or reinit is not None):
        raise EttError(
            f"{m.name} has no scores; the sanity ablations --invert, --shuffle and --reinit apply to scored methods "
            f"({METHODS.choices(lambda x: x.scored)})"
        )
    if m.data and (not isinstance(samples_per_class, int) or samples_per_class < 1):
        raise EttError(f"--samples-per-class {samples_per_class}: give at least 1 image per class")
    if match is None and not m.copies_mask:
        match = "layerwise" if (like is not None and m.layerwise_like) else "global"
    return {"match": match, "bn": (bn or m.bn) if m.network else None}


def check_like(ticket: Ticket, ref: Ticket, where: str) -> None:
    """REF must be a ticket of TICKET's architecture with the same prunable tensors (names and shapes)."""
    if ref.arch.name != ticket.arch.name:
        raise EttError(
            f"--like {where}: it is a {ref.arch.name} ticket but TICKET is {ticket.arch.name}; "
            "match against a ticket of the same architecture"
        )
    mine = {n: ticket.tensors[n].shape for n in ticket.prunable()}
    theirs = {n: ref.tensors[n].shape for n in ref.prunable()}
    if mine != theirs:
        diff = sorted(set(mine.items()) ^ set(theirs.items()))
        name, shape = diff[0]
        raise EttError(
            f"--like {where}: its prunable tensors differ from TICKET's (e.g. {name} {list(shape)}); "
            "match against a ticket of the same network"
        )


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


def _dataset_for(ticket: Ticket, name: str | None):
    from ettcli.data import get_dataset
    from ettcli.recipe import FAMILY_DEFAULTS

    ds = get_dataset(name or ticket.metadata.get("ett.dataset") or FAMILY_DEFAULTS.lookup(ticket.arch.family).dataset)
    if ticket.arch.num_classes != ds.num_classes:
        raise EttError(
            f"TICKET's classifier has {ticket.arch.num_classes} outputs but {ds.name} has {ds.num_classes} classes; "
            "pick a matching --dataset"
        )
    return ds


def _check_counts(masks: Mapping[str, Mask], target: Target | None) -> None:
    if target is None:
        return
    kept = sum(mk.kept for mk in masks.values())
    assert kept == target.keep_pruned, (kept, target.keep_pruned)
    if target.counts is not None:
        assert all(masks[n].kept == c for n, c in target.counts.items())


def _warn_masked_weights(ticket: Ticket, masks: Mapping[str, Mask]) -> None:
    """TICKET's weights should be unmasked; masked ones (zero where TICKET prunes) make newly kept weights zero."""
    revived = 0
    for n, old in ticket.masks.items():
        if n not in masks or old.kept == old.numel:
            continue
        w = ticket.array(n)
        if np.any(w[~old.array] != 0):
            return  # TICKET holds unmasked weights
        revived += int(np.count_nonzero(masks[n].array & ~old.array))
    if revived:
        warn(
            f"TICKET's weights are zero wherever its own mask prunes them (masked, not unmasked rewind-point "
            f"weights), so {revived:,} newly kept weights start at zero; prune the unmasked rewind-point ticket instead"
        )


def _warn_revived(ticket: Ticket, masks: Mapping[str, Mask], method: str) -> None:
    """TICKET's own mask is ignored (methods see its unmasked weights): say so when the result keeps weights it
    pruned, as pruning an IMP ticket at a lower sparsity does."""
    revived = sum(
        int(np.count_nonzero(masks[n].array & ~old.array))
        for n, old in ticket.masks.items()
        if n in masks and old.kept < old.numel
    )
    if revived:
        warn(
            f"TICKET is {100 * ticket.sparsity():.2f}% sparse and {method} ignores its mask: {revived:,} weights TICKET "
            "prunes are kept again; to prune further within it, or to make a baseline, start from the dense "
            "rewind-point ticket (an IMP folder's level_00/ticket.safetensors)"
        )


def _metadata(
    tk, ref, m, target, settings, sparsity, seed, invert, shuffle, reinit, samples, ds, data
) -> dict[str, str]:
    from ettcli.stfile import sha256_file

    meta = {
        k: v
        for k, v in tk.metadata.items()
        if not k.startswith(("ett.prune.", "ett.like", "ett.source", "ett.imp"))  # IMP's keys describe its mask
        and k not in ("ett.command", "ett.plan", "ett.seed", "ett.init", "ett.sparsity")
    }
    if "ett.seed" in tk.metadata and not (m.fresh_weights or reinit is not None):
        meta["ett.seed"] = tk.metadata["ett.seed"]
        if "ett.init" in tk.metadata:
            meta["ett.init"] = tk.metadata["ett.init"]
    meta["ett.prune.method"] = m.name
    if target is not None:
        meta["ett.prune.match"] = settings["match"]
        meta["ett.prune.target_kept"] = str(target.keep)
        meta["ett.prune.target_sparsity"] = repr(sparsity) if sparsity is not None else f"{target.sparsity:.6f}"
        if target.dense:
            meta["ett.prune.dense"] = ",".join(target.dense)
    if m.network:
        meta["ett.prune.bn"] = settings["bn"]
        meta["ett.dataset"] = ds.name
    if m.data and isinstance(data, tuple):
        meta["ett.prune.scoring_images"] = f"{len(data[1])} given in memory"
    elif m.data:
        meta["ett.prune.samples_per_class"] = str(samples)
    if m.seeded:
        meta["ett.prune.seed"] = str(seed)
    if invert:
        meta["ett.prune.invert"] = "true"
    if shuffle is not None:
        meta["ett.prune.shuffle"] = str(shuffle)
    if reinit is not None:
        meta["ett.prune.reinit"] = str(reinit)
    if tk.path is not None and Path(tk.path).is_file():
        meta["ett.source"] = str(tk.path)
        meta["ett.source_sha256"] = sha256_file(tk.path)
    if ref is not None:
        if ref.path is not None:
            meta["ett.like"] = str(ref.path)
        if ref.path is not None and Path(ref.path).is_file():
            meta["ett.like_sha256"] = sha256_file(ref.path)
    return meta
