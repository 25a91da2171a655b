"""FLOPs of tickets: dense per-layer counts from ``torch.utils.flop_counter``, sparse counts from the masks.

:func:`layer_flops` runs one forward pass of the architecture on the ``meta`` device (no memory, no compute)
under :class:`torch.utils.flop_counter.FlopCounterMode` and attributes each module's FLOPs to its prunable
weight (``blocks.0.conv1`` -> ``blocks.0.conv1.weight``). torch counts a multiply-add as 2 FLOPs, so a dense
CIFAR ResNet-20 forward pass is 81.6 MFLOPs (40.8 M multiply-adds). The counts of the paper's architectures
ship with ett (``flops_table.json``, written by ``scripts/make_flops_table.py`` with this same counter); any
other is counted once and cached on disk (``$ETT_CACHE/flops-v1.json``), so later calls need no torch.

A ticket's forward FLOPs are each layer's dense FLOPs times its density (the fraction of its weights kept),
plus whatever torch counts outside prunable layers (nothing, for these families: BatchNorm, ReLU, pooling and
additions are not counted). Training costs three forward passes per image (forward, the gradient with respect
to the activations and the gradient with respect to the weights, each as sparse as the weights): the
convention of the E-LTH and RigL papers, which skip the gradients of pruned weights.
"""

from __future__ import annotations

import json
from functools import cache

TRAIN_FACTOR = 3  # forward + two backward products per image
_CACHE_NAME = "flops-v1.json"
_TABLE = "flops_table.json"  # shipped counts, same keys and values as the cache


def _cache_file():
    from ettcli.data import cache_dir

    return cache_dir() / _CACHE_NAME


def _key(arch: str, num_classes: int, image_size: int) -> str:
    return f"{arch}/{num_classes}/{image_size}"


@cache
def layer_flops(arch: str, num_classes: int = 10, image_size: int = 32) -> dict[str, int]:
    """Dense forward FLOPs of one image per prunable tensor (plus ``""``: FLOPs outside prunable layers)."""
    key = _key(arch, num_classes, image_size)
    shipped = _shipped()
    if key in shipped:
        return shipped[key]
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return cached[key]
    counts = _count(arch, num_classes, image_size)
    try:
        from ettcli.stfile import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
        cached[key] = counts
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(cached, sort_keys=True))
    except OSError:
        pass  # an unwritable cache only costs the next call a forward pass
    return counts


@cache
def _shipped() -> dict[str, dict[str, int]]:
    from pathlib import Path

    try:
        return json.loads((Path(__file__).parent / _TABLE).read_text())
    except (OSError, ValueError):
        return {}


def _count(arch: str, num_classes: int, image_size: int) -> dict[str, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ettcli.arch import parse_arch
    from ettcli.models import build_model

    spec = parse_arch(arch, num_classes=num_classes)
    with torch.device("meta"):
        model = build_model(spec, seed=None, init=False)
        x = torch.empty(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as fc:
        model(x)
    by_module = fc.get_flop_counts()
    root = type(model).__name__
    out: dict[str, int] = {}
    for name, t in spec.tensors.items():
        if t.prunable:
            ops = by_module.get(f"{root}.{name.rsplit('.', 1)[0]}", {})
            out[name] = int(sum(ops.values()))
    out[""] = int(fc.get_total_flops()) - sum(out.values())
    return out


def forward_flops(
    arch: str, densities: dict[str, float] | float = 1.0, num_classes: int = 10, image_size: int = 32
) -> float:
    """Forward FLOPs of one image with each prunable tensor at its density (one number: all tensors alike)."""
    per = layer_flops(arch, num_classes, image_size)
    total = float(per.get("", 0))
    for name, f in per.items():
        if name:
            d = densities if isinstance(densities, (int, float)) else densities.get(name, 1.0)
            total += f * d
    return total


def ticket_forward_flops(ticket, image_size: int = 32) -> float:
    """Forward FLOPs of one image through a ticket, each layer counted at the density of its mask."""
    cut = len(ticket.arch.prefix)  # counts are named without a wrapper prefix such as ``model.``
    dens = {n[cut:]: ticket.masks[n].density for n in ticket.masks}
    return forward_flops(ticket.arch.name, dens, ticket.arch.num_classes, image_size)


def training_flops(forward: float, images: float) -> float:
    """FLOPs of training on ``images`` images at ``forward`` FLOPs each (see the module docstring)."""
    return TRAIN_FACTOR * forward * images


def clear_cache() -> None:
    """Forget the counts in memory (the disk cache stays; remove ``$ETT_CACHE/flops-v1.json`` to recount)."""
    layer_flops.cache_clear()


__all__ = ["layer_flops", "forward_flops", "ticket_forward_flops", "training_flops", "TRAIN_FACTOR", "clear_cache"]
