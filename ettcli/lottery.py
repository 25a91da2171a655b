"""Iterative magnitude pruning with rewinding (Frankle et al.), level by level on ``train_ticket``.

Level 0 trains the dense network from step 0 to the end and keeps its whole state (BatchNorm buffers
included) at the rewind step. Level L prunes ``ceil(rate * remaining)`` of the still-unpruned prunable
weights with the smallest magnitude in level L-1's *trained* weights (exact count; ties go to the earlier
tensor, then the earlier index), puts every tensor back to the rewind-step state, and trains from the
rewind step with a fresh optimizer; the schedule and the data order fast-forward to that step.

Layout of the output folder::

    config.json      the IMP run's identity (source content, rate, rewind step, scope, training settings)
    levels.json      one row per finished level (a rerun with fewer levels keeps the later ones)
    level_00/        a run folder (config, metrics, checkpoint, summary, final.safetensors) plus
                     rewind.safetensors (the dense state at the rewind step) and ticket.safetensors
    level_01/ ...    ticket.safetensors (rewind-step weights, unmasked, with the level's masks) and its run

Every level is a :class:`~ettcli.runs.RunFolder` keyed by its ticket's content, so a rerun skips finished
levels, resumes the interrupted one where it stopped, and ``levels`` can be raised to add levels.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ettcli.errors import EttError, warn
from ettcli.mask import Mask
from ettcli.prune_methods import METHODS, Job
from ettcli.recipe import FAMILY_DEFAULTS
from ettcli.runs import FINAL, REWIND, SUMMARY, RunFolder
from ettcli.selection import imp_target
from ettcli.steps import parse_step

TICKET = "ticket.safetensors"
LEVELS = "levels.json"


@dataclass(frozen=True)
class ImpSpec:
    """How IMP prunes: the fraction of remaining weights per level, where it rewinds, and what it prunes."""

    rate: float = 0.2
    rewind: str | None = None  # default: the family's (1000it CIFAR ResNets, 200it VGG, 5ep ImageNet)
    scope: str = "global"  # "global": one ranking over all prunable tensors; "layerwise": per tensor
    exclude: tuple[str, ...] | None = None  # tensors left dense; default: the family's (VGG: fc.weight)

    def check(self) -> None:
        if not (math.isfinite(self.rate) and 0 < self.rate < 1):
            raise EttError(f"pruning rate {self.rate}: must lie strictly between 0 and 1")
        if self.scope not in ("global", "layerwise"):
            raise EttError(f"scope {self.scope!r}: choose global or layerwise")


def prune_level(trained, masks: dict[str, Mask], rate: float, scope: str) -> dict[str, Mask]:
    """One IMP step: remove ``ceil(rate * remaining)`` of the kept weights with the smallest |w| in ``trained``.

    The registered ``magnitude`` method, as ``ett prune magnitude`` runs it, on the target
    :func:`~ettcli.selection.imp_target` sets: ``masks`` cover exactly the tensors being pruned; globally the
    count is taken over all of them together, layerwise per tensor. Already-pruned weights stay pruned, so
    masks only shrink.
    """
    job = Job(METHODS.lookup("magnitude"), trained, None, imp_target(masks, rate, scope), within=masks)
    return job.method.masks(job)


def imp(
    source,
    settings=None,
    *,
    levels: int,
    out: str | os.PathLike,
    spec: ImpSpec = ImpSpec(),
    seed: int = 0,
    hooks_for: Callable[[int], object] | None = None,
    on_level: Callable[[dict], None] | None = None,
    command: str | None = None,
) -> list[dict]:
    """Run (or continue) IMP with rewinding up to level ``levels``; returns one row per level.

    Args:
        source: a dense :class:`~ettcli.ticket.Ticket`, a path to one, or an architecture name (then
            initialised as ``ett init`` does, with ``seed``).
        settings: :class:`~ettcli.train.TrainSettings` for every level's training.
        levels: the last level (level 0 is the dense network; level L is ``1 - (1 - rate)**L`` sparse).
        out: the IMP folder (see the module docstring).
        spec: rate, rewind step, scope and excluded tensors.
        hooks_for: ``level -> Hooks`` for progress display and stop requests.
        on_level: called with each level's row as it finishes (or is found finished).
        command: recorded as ``ett.command`` in the tickets.
    """
    from ettcli.ticket import read_ticket
    from ettcli.train import TrainSettings, train_ticket

    settings = settings or TrainSettings()
    spec.check()
    settings.check()
    if levels < 1:
        raise EttError(f"levels {levels}: IMP needs at least 1 level (level 0 is the dense network)")
    dense = _dense_source(source, seed)
    family = FAMILY_DEFAULTS.lookup(dense.arch.family)
    rewind = str(parse_step(spec.rewind)) if spec.rewind else str(family.rewind)
    exclude, pruned = _pruned_tensors(dense, spec, levels)

    top = RunFolder(
        Path(out),
        {
            "kind": "imp",
            "source": dense.fingerprint(),
            "arch": dense.arch.name,
            "rate": spec.rate,
            "rewind": rewind,
            "scope": spec.scope,
            "exclude": list(exclude),
            "settings": settings.identity(),
        },
    )
    top.state()  # a folder holding IMP with other settings is refused here, before any work
    top.begin(fresh=False, settings={"levels": levels, **asdict(settings)})
    rows: list[dict] = []
    base_meta = {"ett.imp_rate": str(spec.rate), "ett.imp_scope": spec.scope, "ett.imp_folder": str(top.path)}
    if command:
        base_meta["ett.command"] = command
    hooks_for = hooks_for or (lambda level: None)

    # level 0: the dense network from step 0, its state kept at the rewind step
    level0 = top.path / "level_00"
    t0 = time.perf_counter()
    res = train_ticket(
        dense, settings, folder=level0, from_step="0it", snapshot_at=rewind, hooks=hooks_for(0), metadata=base_meta
    )
    _stop_if_signalled(res)
    rewound = read_ticket(level0 / REWIND)
    _save_if_changed(rewound, level0 / TICKET, {**base_meta, "ett.imp_level": "0"})
    rows.append(_row(0, rewound, res, time.perf_counter() - t0))
    if on_level:
        on_level(rows[-1])
    masks = {n: Mask.ones_like(dense.tensors[n].shape) for n in pruned}
    for level in range(1, levels + 1):
        t0 = time.perf_counter()
        folder, previous = top.path / f"level_{level:02d}", top.path / f"level_{level - 1:02d}"
        masks = _next_masks(res.ticket, masks, spec, level)
        ticket = _save_if_changed(_level_ticket(rewound, masks, base_meta, level, rewind, previous / FINAL),
                                  folder / TICKET, {})  # fmt: skip
        res = train_ticket(ticket, settings, folder=folder, hooks=hooks_for(level), metadata=base_meta)
        _stop_if_signalled(res)
        rows.append(_row(level, ticket, res, time.perf_counter() - t0))
        if on_level:
            on_level(rows[-1])
    top.write_json(LEVELS, rows + _later_levels(top, levels))
    return rows


def _dense_source(source, seed: int):
    """The dense network IMP starts from: a Ticket, a path to one, or an architecture name initialised with ``seed``."""
    from ettcli.models import init_ticket
    from ettcli.ticket import as_ticket

    if isinstance(source, str) and not Path(source).exists() and "/" not in source:
        dense = init_ticket(source, seed)
    else:
        dense = as_ticket(source, "the source")
    if dense.masks:
        raise EttError(
            f"{dense.path or 'the source'} has masks ({100 * dense.sparsity():.2f}% sparse); IMP starts from a dense "
            "network: pass the dense ticket (e.g. from ett init) or an architecture name"
        )
    return dense


def _pruned_tensors(dense, spec: ImpSpec, levels: int) -> tuple[tuple[str, ...], list[str]]:
    """The tensors left dense and those IMP prunes; refused where a level up to ``levels`` would keep none."""
    exclude = tuple(spec.exclude) if spec.exclude is not None else dense.arch.fam.left_dense(dense.arch)
    prunable = dense.prunable()
    for name in exclude:
        if name not in prunable:
            raise EttError(f"cannot exclude '{name}': {dense.arch.name} has no such prunable tensor")
    pruned = [n for n in prunable if n not in exclude]
    sizes = [int(np.prod(dense.tensors[n].shape)) for n in pruned]
    empty = _empty_level(sizes, spec.rate, levels, spec.scope)
    if empty is not None:
        raise EttError(
            f"levels {levels}: level {empty} would keep none of the {sum(sizes):,} weights IMP prunes ({spec.rate:g} "
            f"of the remaining ones per level, {spec.scope}); ask for at most {empty - 1} levels"
        )
    return exclude, pruned


def _next_masks(trained, masks: dict[str, Mask], spec: ImpSpec, level: int) -> dict[str, Mask]:
    """Level ``level``'s masks, pruned from the level before's (``masks``) by ``trained``'s magnitudes."""
    after = prune_level(trained, masks, spec.rate, spec.scope)
    collapsed = [n for n in masks if after[n].kept == 0 < masks[n].kept]
    if collapsed:
        shown = ", ".join(collapsed[:5]) + (f" and {len(collapsed) - 5} more" if len(collapsed) > 5 else "")
        warn(f"layer collapse: IMP level {level} keeps no weight in {shown}; no signal passes through that layer")
    return after


def _level_ticket(rewound, masks: dict[str, Mask], base_meta: dict, level: int, rewind: str, trained_from: Path):
    """Level ``level``'s ticket: the rewind-step weights (unmasked) under its masks."""
    from ettcli.ticket import Ticket

    ticket = Ticket.from_arrays(
        dict(rewound.arrays()),
        masks,
        {
            **{k: v for k, v in rewound.metadata.items() if not k.startswith("ett.imp")},
            **base_meta,
            "ett.imp_level": str(level),
            "ett.rewind_step": rewind,
            "ett.imp_trained_from": str(trained_from),
        },
    )
    ticket.metadata["ett.sparsity"] = f"{ticket.sparsity():.6f}"
    return ticket


def _later_levels(top: RunFolder, levels: int) -> list[dict]:
    """The rows of levels beyond ``levels`` that an earlier, longer run finished and whose folders remain: a
    rerun with fewer levels keeps them in ``levels.json`` rather than hide them."""
    try:
        old = top.read_json(LEVELS)
    except (OSError, ValueError):
        return []
    return [
        r
        for r in old
        if isinstance(r, dict)
        and isinstance(r.get("level"), int)
        and r["level"] > levels
        and RunFolder.reading(top.path / f"level_{r['level']:02d}").file(SUMMARY).is_file()
    ]


def _empty_level(sizes: list[int], rate: float, levels: int, scope: str) -> int | None:
    """The first level up to ``levels`` at which IMP keeps none of the weights it prunes (``None``: none does)."""
    remaining = list(sizes) if scope == "layerwise" else [sum(sizes)]
    for level in range(1, levels + 1):
        remaining = [r - math.ceil(rate * r) for r in remaining]
        if not any(remaining):
            return level
    return None


def _stop_if_signalled(res) -> None:
    """A signal held while a level's final files were written ends IMP after that level (it is complete)."""
    if res.late_signal is not None:
        from ettcli.errors import Terminated

        raise Terminated(res.late_signal)


def _save_if_changed(ticket, path: Path, extra: dict):
    """Write ``ticket`` to ``path`` unless the file already holds the same content (reruns keep files)."""
    from ettcli.ticket import read_ticket

    ticket.metadata.update(extra)
    if path.is_file():
        have = read_ticket(path)
        if have.fingerprint() == ticket.fingerprint():
            return have
    path.parent.mkdir(parents=True, exist_ok=True)
    ticket.save(path)
    return read_ticket(path)


def _row(level: int, ticket, res, seconds: float) -> dict:
    total, kept = ticket.counts()
    s = res.summary
    return {
        "level": level,
        "sparsity": 1 - kept / total if total else 0.0,
        "kept": kept,
        "prunable": total,
        "final_test_accuracy": s["final_test_accuracy"],
        "best_test_accuracy": s["best_test_accuracy"],
        "train_seconds": s["seconds"],
        "level_seconds": seconds,
        "already_finished": res.already_finished,
        "folder": str(res.folder),
    }
