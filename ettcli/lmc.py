"""Linear mode connectivity and instability of tickets (Frankle et al., "Linear Mode Connectivity and the
Lottery Ticket Hypothesis", ICML 2020).

Two copies of a ticket are trained from its rewind step with different data orders and augmentation (two
seeds). The ticket is *stable* when the error along the straight line between the two trained copies does
not rise above the error of the copies themselves. Read top to bottom:

1. :func:`interpolate`: ``(1 - alpha) * A + alpha * B`` under the shared masks.
2. :func:`reset_bn`: BatchNorm running statistics re-estimated for the interpolated weights. The
   interpolation of two networks' running statistics is not the statistics of the interpolated network;
   keeping them inflates the error between the endpoints of every network with BatchNorm.
3. :func:`instability`: the largest rise of the error above the mean of the endpoints' errors.
4. :func:`connectivity` measures the path between two trained tickets; :func:`run_lmc` first trains the two
   copies through :func:`~ettcli.train.train_ticket` (a finished run with the same settings is reused, not
   trained again) and :func:`lmc_pair` takes two tickets trained elsewhere. Both write ``lmc.json``.

What is measured at every alpha of a uniform grid on [0, 1], endpoints included:

* BatchNorm statistics (unless ``bn_reset=False``) re-estimated on ``bn_batches`` batches of the training
  batch size: the first batches of epoch 0 under seed :data:`BN_SEED`, the same images and the same crops and
  flips at every alpha, in every run, whatever the runs' seeds. By default they are augmented as in training
  (``bn_data="augmented"``): the trained networks' own statistics come from augmented batches, and
  re-estimating them on un-augmented images changes the endpoints themselves (a 2-epoch CIFAR ResNet-20:
  63.4% test accuracy with its trained statistics, 59.1% re-estimated on 50 un-augmented batches, 63.5% on
  the same batches augmented).
  ``bn_data="plain"`` uses the same images without augmentation.
* Test loss and accuracy on the whole test set.
* Train loss and accuracy on ``train_images`` un-augmented training images (default 10,000: every 5th image
  of CIFAR's 50,000, evenly spread over the set whatever its order). The whole training set would cost 5x
  the test set at every alpha; on 10,000 images the standard error of an accuracy is at most 0.5 percentage
  points, small against the barriers being measured. ``train_images=0`` skips it; a number at least the
  training set's size takes all of it.
* With a training ``subset`` in the settings (``ett lmc --subset``, a study's ``train.subset``), the BatchNorm
  batches and the train evaluation come from that subset only: the images the two copies were trained on.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ettcli.errors import EttError, warn
from ettcli.feeders import epoch_plan

LMC_FILE = "lmc.json"
DEFAULT_TRAIN_IMAGES = 10_000
BN_SEED = 0  # the data seed of the BatchNorm batches (order, crops, flips); fixed, whatever the runs' seeds
BN_DATA = ("augmented", "plain")


# --- the three measurements ----------------------------------------------------------------------------------
def interpolate(a, b, alpha: float, masks: Mapping | None = None):
    """The network ``(1 - alpha) * A + alpha * B``, with every masked weight exactly 0.

    Args:
        a, b: two state dicts (name -> tensor) of one architecture, or two :class:`~ettcli.ticket.Ticket`
            with the same architecture and the same masks.
        alpha: the position on the line; 0 gives A's weights and 1 gives B's, exactly. Values outside
            [0, 1] extrapolate.
        masks: for state dicts, the shared masks (name -> bool array, tensor or
            :class:`~ettcli.mask.Mask`); tickets bring their own.

    Floating-point tensors are interpolated (``torch.lerp``, exact at both ends), then the masks are applied,
    so a pruned weight stays exactly 0 at every alpha. Integer tensors (BatchNorm's ``num_batches_tracked``)
    are taken from A. Returns a state dict for state dicts, a ticket (with A's masks) for tickets.
    """
    from ettcli.ticket import Ticket

    if isinstance(a, Ticket) or isinstance(b, Ticket):
        if not (isinstance(a, Ticket) and isinstance(b, Ticket)):
            raise TypeError("interpolate takes two tickets or two state dicts, not one of each")
        check_same_layout(a, b)
        mixed = _mix(_state_of(a), _state_of(b), alpha, a.masks)
        meta = {"ett.lmc_alpha": f"{alpha:g}"}
        for key in ("ett.dataset", "ett.heads"):  # what the network is trained and built as
            if key in a.metadata:
                meta[key] = a.metadata[key]
        return Ticket.from_arrays({k: v.numpy() for k, v in mixed.items()}, a.masks, meta)
    return _mix(a, b, alpha, masks)


def _mix(sa: Mapping[str, torch.Tensor], sb: Mapping[str, torch.Tensor], alpha: float, masks) -> dict:
    if not math.isfinite(alpha):
        raise EttError(f"interpolation coefficient {alpha}: must be a finite number")
    only = sorted(set(sa) ^ set(sb))
    if only:
        raise EttError(f"the two networks hold different tensors ('{only[0]}' is in only one); use one architecture")
    keep = {name: _bool_mask(m, sa[name], name) for name, m in (masks or {}).items() if name in sa}
    out = {}
    for name, va in sa.items():
        vb = sb[name]
        if va.shape != vb.shape:
            raise EttError(f"'{name}' is {list(va.shape)} in one network and {list(vb.shape)} in the other")
        if not va.is_floating_point():
            out[name] = va.clone()
            continue
        w = torch.lerp(va, vb.to(dtype=va.dtype, device=va.device), float(alpha))
        if name in keep:
            w = torch.where(keep[name], w, torch.zeros((), dtype=w.dtype, device=w.device))
        out[name] = w
    return out


def _bool_mask(m, like: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(m, torch.Tensor):
        t = m.to(device=like.device, dtype=torch.bool)
    else:
        t = torch.from_numpy(np.array(getattr(m, "array", m), dtype=bool)).to(like.device)
    if t.shape != like.shape:
        raise EttError(f"the mask of '{name}' is {list(t.shape)} but the tensor is {list(like.shape)}")
    return t


def _state_of(ticket, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)).to(device) for k, v in ticket.arrays()}


def check_same_layout(a, b) -> None:
    """Refuse two tickets that cannot be interpolated: another architecture, other tensors, or other masks."""
    wa, wb = a.path or "the first ticket", b.path or "the second ticket"
    if a.arch != b.arch:
        raise EttError(f"{wa} is {a.arch.name} but {wb} is {b.arch.name}; interpolate two copies of one architecture")
    if a.arch.heads != b.arch.heads:
        raise EttError(
            f"{wa} states {a.arch.heads or 'no'} attention heads (ett.heads) but {wb} states "
            f"{b.arch.heads or 'none'}; interpolate two copies of one network"
        )
    for name in a.tensors:
        if name not in b.tensors or a.tensors[name].shape != b.tensors[name].shape:
            raise EttError(f"{wa} and {wb} differ in '{name}'; interpolate two copies of one architecture")
    diff = {}
    for name in sorted(set(a.masks) | set(b.masks)):
        n = int(np.count_nonzero(a.mask(name).array != b.mask(name).array))
        if n:
            diff[name] = n
    if diff:
        first = next(iter(diff))
        raise EttError(
            f"{wa} and {wb} have different masks ({sum(diff.values()):,} weights in {len(diff)} tensors differ, "
            f"first {first}_mask); linear mode connectivity compares two trainings of one ticket"
        )


def has_batchnorm(spec) -> bool:
    """Whether a network keeps BatchNorm running statistics (read from its tensor names, no model built)."""
    return any(name.endswith("running_mean") for name in spec.tensors)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def reset_bn(model: nn.Module, batches: Iterable) -> int:
    """Re-estimate every BatchNorm layer's running statistics on ``batches``; returns how many layers it reset.

    Each layer's running mean and variance are reset, then accumulated as a cumulative average (momentum
    ``None``) over train-mode forward passes without gradients: the result is the mean over the batches of
    each batch's mean and unbiased variance of the layer's input, exactly what the layer would hold had it
    seen only these batches. The layers' momentum is restored and the model left in eval mode.

    ``batches`` yields input tensors or ``(inputs, labels)`` pairs; use the same batches for every network
    that is compared. A model without BatchNorm is left as it is (returns 0).
    """
    layers = _batchnorms(model)
    if not layers:
        model.eval()
        return 0
    momenta = [m.momentum for m in layers]
    seen = 0
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            for batch in batches:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                seen += 1
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.eval()
    if not seen:
        raise EttError("reset_bn was given no batches: the BatchNorm statistics cannot be re-estimated")
    return len(layers)


def instability(errors: Sequence[float]) -> float:
    """Frankle et al.'s instability of an error curve along the interpolation path.

    ``errors[i]`` is the error at the i-th alpha of the grid, ``errors[0]`` at A and ``errors[-1]`` at B.
    The instability is ``max_i errors[i] - (errors[0] + errors[-1]) / 2``: the largest rise above the mean
    of the endpoints' errors, the endpoints included (so it is never negative). Errors in percent give
    percentage points.
    """
    e = [float(x) for x in errors]
    if len(e) < 2:
        raise EttError(f"an error curve needs both endpoints; got {len(e)} value(s)")
    if not all(math.isfinite(x) for x in e):
        raise EttError("the error curve holds a non-finite value")
    return max(e) - (e[0] + e[-1]) / 2


def alpha_grid(alphas: int) -> list[float]:
    """``alphas`` evenly spaced points of [0, 1], both ends exact (11 gives 0.0, 0.1, ..., 1.0)."""
    if alphas < 2:
        raise EttError(f"alphas {alphas}: the path needs at least its two endpoints (2); 11 is usual")
    return [i / (alphas - 1) for i in range(alphas)]


# --- measuring a path ------------------------------------------------------------------------------------------
@torch.no_grad()
def _curve(rows: list[dict], split: str) -> dict:
    acc = [r[f"{split}_accuracy"] for r in rows]
    err = [100.0 * (1.0 - x) for x in acc]
    return {
        "accuracy": acc,
        "loss": [r[f"{split}_loss"] for r in rows],
        "error": err,
        "instability": instability(err),
    }


def connectivity(
    a,
    b,
    feeder,
    *,
    alphas: int = 11,
    bn_batches: int = 50,
    bn_reset: bool = True,
    bn_data: str = "augmented",
    train_images: int = DEFAULT_TRAIN_IMAGES,
    precision: str = "fp32",
    on_alpha: Callable[[dict], None] | None = None,
) -> dict:
    """Measure the linear path between two trained tickets ``a`` and ``b`` (same architecture and masks).

    ``feeder`` is a :class:`~ettcli.feeders.MemoryFeeder` of the dataset: its device, its batch size (of the
    BatchNorm batches) and its seed (their order and augmentation; ``ett lmc`` uses :data:`BN_SEED`). Returns the
    alphas, one row per alpha, the test (and train) curves with their instability in percentage points, and
    the seconds spent re-estimating statistics and evaluating. ``on_alpha`` gets each row as it is measured.
    """
    from ettcli.models import model_from_ticket
    from ettcli.train import autocast_for, evaluate

    check_same_layout(a, b)
    grid = alpha_grid(alphas)
    device = feeder.device
    autocast = autocast_for(device.type, precision)
    if bn_reset:
        _check_bn_data(bn_data)
    sub = train_subset(feeder.n, train_images)
    model = model_from_ticket(a, device).to(memory_format=torch.channels_last)
    layers = len(_batchnorms(model))
    if bn_reset and layers:  # a network without BatchNorm (a ViT's LayerNorm) needs no batches for it
        bn_idx = bn_indices(feeder.n, bn_batches, feeder.batch, feeder.seed)
    if bn_reset and not layers:
        warn(f"{a.path or 'the ticket'} has no BatchNorm layers: there are no statistics to re-estimate")
    sa, sb = _state_of(a, device), _state_of(b, device)
    masks = {n: _bool_mask(m, sa[n], n) for n, m in a.masks.items()}
    seconds = {"bn_reset": 0.0, "test": 0.0, "train": 0.0}
    rows = []
    for alpha in grid:
        model.load_state_dict(_mix(sa, sb, alpha, masks), strict=True)
        t = time.perf_counter()
        if bn_reset and layers:
            with autocast:
                if bn_data == "augmented":
                    reset_bn(model, itertools.islice(feeder.batches(0), bn_batches))
                else:
                    reset_bn(model, feeder.plain_train_batches(bn_idx, feeder.batch))
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the seconds of each part, not of whatever the queue holds
        t1 = time.perf_counter()
        test_loss, test_acc = evaluate(model, feeder.test_batches(), device, autocast)
        t2 = time.perf_counter()
        row = {"alpha": alpha, "test_loss": test_loss, "test_accuracy": test_acc}
        if len(sub):
            row["train_loss"], row["train_accuracy"] = evaluate(
                model, feeder.plain_train_batches(sub), device, autocast
            )
        t3 = time.perf_counter()
        for key, dt in (("bn_reset", t1 - t), ("test", t2 - t1), ("train", t3 - t2)):
            seconds[key] += dt
        for key, value in row.items():
            if not math.isfinite(value):
                raise EttError(f"the {key.replace('_', ' ')} at alpha {alpha:g} is not finite; the networks diverged")
        rows.append(row)
        if on_alpha:
            on_alpha(row)
    return {
        "alphas": grid,
        "rows": rows,
        "test": _curve(rows, "test"),
        "train": {**_curve(rows, "train"), "images": len(sub)} if len(sub) else None,
        "bn_layers": layers,
        "seconds": {**seconds, "evaluation": sum(seconds.values())},
    }


def bn_indices(n: int, bn_batches: int, batch: int, seed: int = BN_SEED) -> torch.Tensor:
    """The training images whose batches re-estimate BatchNorm: the first ``bn_batches * batch`` of epoch 0's
    order under data seed ``seed`` (the images of ``MemoryFeeder.batches(0)``'s first ``bn_batches``)."""
    _check_bn_batches(bn_batches)
    need = bn_batches * batch
    if need > n:
        raise EttError(
            f"bn-batches {bn_batches} of {batch} images need {need:,} training images but the dataset has {n:,}; "
            f"use at most {n // batch}"
        )
    return epoch_plan(seed, 0, n, 0)["order"][:need]


def _check_bn_data(bn_data: str) -> None:
    if bn_data not in BN_DATA:
        raise EttError(f"bn-data {bn_data!r}: choose {' or '.join(BN_DATA)}")


def _check_bn_batches(bn_batches: int) -> None:
    if bn_batches < 1:
        raise EttError(
            f"bn-batches {bn_batches}: re-estimating BatchNorm needs at least 1 batch; "
            "to keep the interpolated statistics, turn the reset off (--no-bn-reset)"
        )


def train_subset(n: int, train_images: int) -> torch.Tensor:
    """Indices of the un-augmented training images evaluated: ``train_images`` evenly spaced over the set
    (every 5th of 50,000 for 10,000), so a set stored class by class is still covered evenly."""
    if train_images < 0:
        raise EttError(f"train-images {train_images}: use 0 (no train evaluation) or more")
    k = min(train_images, n)
    return (torch.arange(k, dtype=torch.int64) * n) // max(k, 1)


# --- the two entry points -------------------------------------------------------------------------------------
def run_lmc(
    ticket,
    settings=None,
    *,
    seeds: Sequence[int] = (0, 1),
    alphas: int = 11,
    bn_batches: int = 50,
    bn_reset: bool = True,
    bn_data: str = "augmented",
    train_images: int = DEFAULT_TRAIN_IMAGES,
    out: str | os.PathLike | None = None,
    hooks_for: Callable[[int], object] | None = None,
    on_alpha: Callable[[dict], None] | None = None,
    metadata: dict[str, str] | None = None,
) -> dict:
    """Train two copies of ``ticket`` and measure the linear path between them; returns ``lmc.json``'s record.

    Args:
        ticket: a :class:`~ettcli.ticket.Ticket` or a path; both copies start from its rewind step.
        settings: :class:`~ettcli.train.TrainSettings` for both copies; its ``seed`` is replaced by each of
            ``seeds`` (the data order and augmentation of each copy).
        seeds: two different seeds.
        alphas, bn_batches, bn_reset, bn_data, train_images: see the module docstring and :func:`connectivity`.
        out: the folder for ``lmc.json`` (default ``$ETT_RUNS/lmc-<ticket stem>-<identity hash>``).
        hooks_for: ``seed -> Hooks`` for each copy's training.
        on_alpha: called with each alpha's row.
        metadata: extra metadata for the trained tickets (e.g. ``ett.command``).

    The copies are ordinary training runs in their default folders, so a finished run with the same
    settings (from ``ett train`` or an earlier ``ett lmc``) is reused, and an interrupted one resumed.
    """
    from ettcli.runs import FINAL
    from ettcli.ticket import Ticket, as_ticket, read_ticket
    from ettcli.train import TrainSettings, train_ticket

    settings = settings or TrainSettings()
    settings.check()
    seeds = tuple(int(s) for s in seeds)
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        raise EttError(f"seeds {','.join(map(str, seeds))}: give two different seeds, e.g. 0,1")
    tk = as_ticket(ticket)
    source = Path(ticket) if not isinstance(ticket, Ticket) else tk.path
    ctx = _Context.make(tk, settings, alphas, bn_batches, bn_reset, bn_data, train_images)
    train_id = {k: v for k, v in settings.identity().items() if k != "seed"}  # the copies' seeds are listed
    identity = {"kind": "lmc", "ticket": tk.fingerprint(), "train": train_id, "seeds": list(seeds), **ctx.identity()}
    folder = _lmc_folder(out, source or "ticket", identity)

    hooks_for = hooks_for or (lambda seed: None)
    runs = []
    for seed in seeds:
        res = train_ticket(tk, replace(settings, seed=seed), hooks=hooks_for(seed), metadata=metadata)
        runs.append(res)
    a, b = (read_ticket(r.folder / FINAL) for r in runs)
    result = connectivity(a, b, ctx.feeder, on_alpha=on_alpha, **ctx.measure_args())
    record = {
        "kind": "lmc",
        "source": str(source) if source else None,
        "arch": tk.arch.name,
        "dataset": ctx.ds.name,
        "sparsity": tk.sparsity(),
        "rewind_step": runs[0].summary["start_step"],
        "end_step": runs[0].summary["end_step"],
        **_summary(result),
        "settings": {**ctx.settings_record(), "seeds": list(seeds), "train": asdict(settings)},
        "tickets": [str(r.folder / FINAL) for r in runs],
        "runs": [
            {
                "folder": str(r.folder),
                "seed": seed,
                "final_test_accuracy": r.summary["final_test_accuracy"],
                "already_finished": r.already_finished,
                "seconds": r.summary["seconds"],
            }
            for seed, r in zip(seeds, runs)
        ],
    }
    return _write(folder, record)


def lmc_pair(
    a,
    b,
    settings=None,
    *,
    alphas: int = 11,
    bn_batches: int = 50,
    bn_reset: bool = True,
    bn_data: str = "augmented",
    train_images: int = DEFAULT_TRAIN_IMAGES,
    out: str | os.PathLike | None = None,
    on_alpha: Callable[[dict], None] | None = None,
) -> dict:
    """Measure the linear path between two already-trained tickets ``a`` and ``b`` (paths or tickets).

    They must share the architecture and the masks. ``settings`` gives the dataset, data root, batch size
    (of the BatchNorm batches), device, precision and threads; the training options in it are not used.
    ``out`` defaults to ``$ETT_RUNS/lmc-<a's stem>-<identity hash>``. Returns ``lmc.json``'s record.
    """
    from ettcli.ticket import as_ticket
    from ettcli.train import TrainSettings

    settings = settings or TrainSettings()
    settings.check()
    ta, tb = (as_ticket(t) for t in (a, b))
    check_same_layout(ta, tb)
    _warn_degenerate_pair(ta, tb)
    ctx = _Context.make(ta, settings, alphas, bn_batches, bn_reset, bn_data, train_images)
    identity = {"kind": "lmc-pair", "a": ta.fingerprint(), "b": tb.fingerprint(), **ctx.identity()}
    folder = _lmc_folder(out, ta.path or "pair", identity)
    result = connectivity(ta, tb, ctx.feeder, on_alpha=on_alpha, **ctx.measure_args())
    record = {
        "kind": "lmc-pair",
        "source": None,
        "arch": ta.arch.name,
        "dataset": ctx.ds.name,
        "sparsity": ta.sparsity(),
        **_summary(result),
        "settings": ctx.settings_record(),
        "tickets": [str(t.path) if t.path else None for t in (ta, tb)],
        "runs": None,
    }
    return _write(folder, record)


def _warn_degenerate_pair(ta, tb) -> None:
    """A pair whose path says nothing about stability: one network twice, or one end never trained."""
    from ettcli.errors import warn

    names = [str(t.path) if t.path else f"ticket {i}" for i, t in enumerate((ta, tb), 1)]
    if ta.fingerprint() == tb.fingerprint():
        warn(f"--pair: {names[0]} and {names[1]} hold the same weights, so every point of the path is one network and "
             "the instability is 0 by construction; pass the trainings of one ticket with two different seeds")  # fmt: skip
        return
    trained = ["ett.step" in t.metadata for t in (ta, tb)]
    if trained[0] != trained[1]:
        other = names[trained.index(False)]
        warn(f"--pair: {other} records no training (no ett.step in its metadata) while the other end does; the "
             "path to an untrained network measures no instability; pass both trainings' final.safetensors")  # fmt: skip


@dataclass
class _Context:
    """What both entry points resolve before any work: the evaluation settings (checked), the dataset (loaded,
    so missing data fails before any training), the device, the precision and the feeder."""

    ds: object
    alphas: int
    bn_batches: int
    bn_reset: bool
    bn_data: str
    batch: int
    train_images: int
    device: str
    precision: str
    root: Path
    n_train: int
    feeder: object
    subset: int | None = None

    @staticmethod
    def make(
        ticket, settings, alphas: int, bn_batches: int, bn_reset: bool, bn_data: str, train_images: int
    ) -> _Context:
        from ettcli.feeders import MemoryFeeder
        from ettcli.train import TrainContext

        alpha_grid(alphas)
        if bn_reset:
            _check_bn_batches(bn_batches)
            _check_bn_data(bn_data)
        if train_images < 0:
            raise EttError(f"train-images {train_images}: use 0 (no train evaluation) or more")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise EttError(
                "ett lmc runs in one process; train the two copies with torchrun and ett train, "
                "then compare them with ett lmc --pair"
            )
        ctx = TrainContext.resolve(ticket, settings)
        ds = ctx.dataset
        if ds.kind != "memory":
            raise EttError(
                f"ett lmc measures datasets held in memory (cifar10, cifar100); {ds.name} is read from image "
                "folders, which this measurement does not support"
            )
        batch = ctx.batch
        if batch < 1:
            raise EttError(f"batch size {batch}: must be at least 1")
        # the images the copies trained on (subset included): their train error and statistics
        data, root, device, precision = ctx.load().data, ctx.root, ctx.device, ctx.precision
        n_train = len(data.train_y)
        if bn_reset and has_batchnorm(ticket.arch):
            bn_indices(n_train, bn_batches, batch)  # enough images for the batches, before any training
        feeder = MemoryFeeder(data, ds, batch, torch.device(device), seed=BN_SEED)
        kept = min(train_images, n_train)
        return _Context(
            ds, alphas, bn_batches, bn_reset, bn_data, batch, kept, device, precision, root, n_train, feeder,
            settings.subset,
        )  # fmt: skip

    def measure_args(self) -> dict:
        return {
            "alphas": self.alphas,
            "bn_batches": self.bn_batches,
            "bn_reset": self.bn_reset,
            "bn_data": self.bn_data,
            "train_images": self.train_images,
            "precision": self.precision,
        }

    def identity(self) -> dict:
        """The evaluation's part of the output folder's identity."""
        return {
            "dataset": self.ds.name,
            "alphas": self.alphas,
            "bn_reset": self.bn_reset,
            "bn_batches": self.bn_batches if self.bn_reset else None,
            "bn_batch_size": self.batch if self.bn_reset else None,
            "bn_data": self.bn_data if self.bn_reset else None,
            "train_images": self.train_images,
            "device": self.device,
            "precision": self.precision,
            **({"subset": self.subset} if self.subset is not None else {}),
        }

    def settings_record(self) -> dict:
        return {**self.identity(), "data_root": str(self.root), "train_set_size": self.n_train}


def _summary(result: dict) -> dict:
    return {k: result[k] for k in ("alphas", "test", "train", "bn_layers", "seconds")}


def _lmc_folder(out, stem_source, identity: dict):
    """The output folder, checked before any work: one holding another measurement is refused."""
    from ettcli.runs import RunFolder, stem_of
    from ettcli.stfile import check_writable

    folder = RunFolder(Path(out), identity) if out else RunFolder.default("lmc-" + stem_of(stem_source), identity)
    folder.state()
    check_writable(folder.path, folder=True)  # a folder that cannot be written fails here, not after the work
    return folder


def _write(folder, record: dict) -> dict:
    record = {**record, "out": str(folder.path)}
    folder.begin(fresh=False, settings={"kind": record["kind"]})
    folder.write_json(LMC_FILE, record)
    return record
