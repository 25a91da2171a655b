"""Shared checks for the family tests: a real model's state dict as a masked ticket, a ticket back as a
state dict, and the transform property (every target tensor equals its mapped source tensor, masks too)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ettcli.ticket import Ticket


def masked_ticket(model: torch.nn.Module, seed: int = 1) -> Ticket:
    """The model's state dict with a random half of every prunable tensor masked."""
    arrays = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    dense = Ticket.from_arrays(arrays, {}, {})
    rng = np.random.default_rng(seed)
    masks = {n: rng.random(dense.tensors[n].shape) < 0.5 for n in dense.prunable()}
    return dense.with_masks(masks)


def state(ticket: Ticket) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in ticket.arrays()}


def mapped(mapping: str, stages: int) -> list[dict[int, int]]:
    """Per stage, target position -> source unit, read from the mapping string by the test itself."""
    parts = mapping.split("|") if "|" in mapping else [mapping] * stages
    out = []
    for part in parts:
        row = {}
        for token in part.split(";"):
            i, dsts = token.split(":")
            row.update({int(j): int(i) for j in dsts.split(",")})
        out.append(row)
    return out


def check_mapping(src: Ticket, out: Ticket, mapping: str, prefix: Callable[[int, int], str]) -> None:
    """The output against the mapping, in the library's own names: every tensor of target unit ``prefix(s, j)``
    equals the same tensor of source unit ``prefix(s, i)`` (masks too); every other tensor (stem, head, layers
    between stages) is the source's own, unchanged; and the unit tensors are exactly the mapped units' tensors."""
    rows = mapped(mapping, len(out.arch.stages))
    unit_keys = set()
    for s, row in enumerate(rows):
        for j, i in row.items():
            source_keys = [k for k in src.tensors if k.startswith(prefix(s, i))]
            assert source_keys, (s, i)
            for key in source_keys:
                target = prefix(s, j) + key[len(prefix(s, i)) :]
                unit_keys.add(target)
                assert np.array_equal(out.array(target), src.array(key)), (target, key)
                assert (target in out.masks) == (key in src.masks), target
                if key in src.masks:
                    assert np.array_equal(out.masks[target].array, src.masks[key].array), target
    for s in range(len(rows)):
        for i in range(src.arch.stages[s]):
            unit_keys.update(k for k in src.tensors if k.startswith(prefix(s, i)))
    outside = set(src.tensors) - unit_keys
    assert outside and outside <= set(out.tensors)
    for key in outside:
        assert np.array_equal(out.array(key), src.array(key)), key
        assert (key in out.masks) == (key in src.masks), key
    assert {k for k in out.tensors if k not in outside} == {
        k for s, row in enumerate(rows) for j in row for k in out.tensors if k.startswith(prefix(s, j))
    }


def check_units_follow(src: Ticket, out: Ticket, plan) -> None:
    """Every target tensor equals its mapped source tensor, masks included; nothing else is in the output."""
    sources = plan.tensor_sources()
    assert set(out.tensors) == set(sources)
    for name, (from_name, _) in sources.items():
        assert np.array_equal(out.array(name), src.array(from_name)), name
        assert (name in out.masks) == (from_name in src.masks), name
        if name in out.masks:
            assert np.array_equal(out.masks[name].array, src.masks[from_name].array), name
        if plan.target.tensors[name].role != "unit":
            assert from_name == name  # stem, head and merging layers unchanged, under their own names
