"""Helpers for the transform tests: tickets whose every unit carries distinct, recognisable values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ettcli.arch import ArchSpec, parse_arch
from ettcli.ticket import Ticket, read_ticket


def unit_code(t) -> float:
    """A value that says where a tensor came from: 1000 + 100*stage + unit for units, 1 stem, 2 head."""
    if t.role == "stem":
        return 1.0
    if t.role == "head":
        return 2.0
    return 1000.0 + 100.0 * t.stage + t.unit


def labelled_ticket(spec: ArchSpec | str, seed: int = 0, density: float = 0.3) -> Ticket:
    """A ticket of ``spec`` where each tensor's values encode its unit and each prunable tensor has a random mask.

    Float tensors hold ``unit_code + small noise`` (so masks, weights and BN statistics can be traced),
    ``num_batches_tracked`` holds ``int(unit_code)``.
    """
    spec = parse_arch(spec) if isinstance(spec, str) else spec
    rng = np.random.default_rng(seed)
    arrays, masks = {}, {}
    for name, t in spec.tensors.items():
        code = unit_code(t)
        if name.endswith("num_batches_tracked"):
            arrays[name] = np.array(int(code), dtype=np.int64)
            continue
        arrays[name] = (code + rng.random(t.shape) * 0.01).astype(np.float32)
        if t.prunable:
            masks[name] = rng.random(t.shape) < density
    return Ticket.from_arrays(arrays, masks, {"ett.rewind_step": "1000it", "ett.dataset": "cifar10"})


def write_labelled(path: Path, spec: ArchSpec | str, seed: int = 0, density: float = 0.3) -> Ticket:
    labelled_ticket(spec, seed, density).save(path)
    return read_ticket(path)


def all_arrays(ticket: Ticket) -> dict[str, np.ndarray]:
    """Every tensor and every mask (as ``X_mask``) by name, read into memory."""
    out = {n: np.array(a) for n, a in ticket.arrays()}
    out.update({n + "_mask": m.array.copy() for n, m in ticket.masks.items()})
    return out
