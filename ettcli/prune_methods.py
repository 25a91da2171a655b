"""The registry of pruning methods: what each one is and the function that makes its masks.

A method scores weights (magnitude, SNIP, GraSP, SynFlow) or makes masks without scores (the random
baselines, reinit); how many weights survive where is :mod:`ettcli.selection`'s part. Each registered
:class:`Method` names its function by module path; the torch-based scorers (``ettcli.scores``) load on first
use, so importing this module never imports torch. ``ett prune METHOD`` and IMP's levels both run methods
from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ettcli.mask import Mask
from ettcli.registry import Registry
from ettcli.selection import MATCHES, Target, counts_from_densities, erk_densities, uniform_densities

if TYPE_CHECKING:
    from ettcli.ticket import Ticket

BN_MODES = ("train", "eval")


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

    def masks(self, job: Job) -> dict[str, Mask]:
        """Run the method on ``job``: the masks it makes (torch scorers never use more threads than this
        process's CPUs)."""
        if self.network:
            from ettcli.cpus import clamp_torch_threads

            clamp_torch_threads()
        return self.load()(job)


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
        "ettcli.prune_methods:magnitude",
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
        "ettcli.prune_methods:random_masks",
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
        "ettcli.prune_methods:copy_masks",
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
        "ettcli.prune_methods:uniform_masks",
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
        "ettcli.prune_methods:erk_masks",
        scored=False,
        seeded=True,
        matches=("global",),
    )
)


# --- one run ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruneOptions:
    """The settings of one pruning run (:func:`ettcli.pruning.prune`; ``ett prune METHOD``'s options).

    Attributes:
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
    """

    sparsity: float | None = None
    like: Ticket | str | Path | None = None
    match: str | None = None
    data: str | Path | tuple | None = None
    download: bool = False
    dataset: str | None = None
    samples_per_class: int = 10
    bn: str | None = None
    seed: int = 0
    invert: bool = False
    shuffle: int | None = None
    reinit: int | None = None
    exclude: Sequence[str] | None = None
    device: str = "cpu"


@dataclass
class Job:
    """Everything a method function may need for one run."""

    method: Method
    ticket: Ticket
    ref: Ticket | None
    target: Target | None  # None only for a method that copies a mask
    options: PruneOptions = PruneOptions()
    bn: str | None = None  # the BatchNorm mode while scoring (the option, else the method's default)
    dataset: object = None  # DatasetSpec of the network's data (image shape; images for data methods)
    within: Mapping[str, Mask] | None = None  # weights already pruned stay pruned (IMP's next level)

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def invert(self) -> bool:
        return self.options.invert

    @property
    def data(self):
        """The data root folder, or an (images, labels) pair of arrays."""
        return self.options.data

    @property
    def samples_per_class(self) -> int:
        return self.options.samples_per_class

    @property
    def device(self) -> str:
        return self.options.device

    @property
    def download(self) -> bool:
        return self.options.download

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
    return job.select({n: np.abs(w.astype(np.float64)) for n, w in job.weights().items()}, allowed=job.within)


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
