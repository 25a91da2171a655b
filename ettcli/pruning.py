"""Pruning: the public :func:`prune` API, on the method registry and the selection code.

:mod:`ettcli.selection` decides how many weights survive where (exact counts, top-k, uniform and ERK
allocation); :mod:`ettcli.prune_methods` holds the registered methods (``METHODS``) that score weights or
make masks; this module checks a run's settings (:class:`PruneOptions`) against its method, runs the method
and writes the result as a ticket with its provenance. The names of both modules are importable from here.

Numpy only: importing this module never imports torch. Methods name their function by module path, and
the torch-based scorers (``ettcli.scores``) load on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ettcli.errors import EttError, warn
from ettcli.mask import Mask
from ettcli.prune_methods import (  # noqa: F401  (the registry's names, importable from here)
    BN_MODES,
    METHODS,
    Job,
    Method,
    PruneOptions,
    copy_masks,
    erk_masks,
    magnitude,
    random_masks,
    register,
    uniform_masks,
)
from ettcli.selection import (  # noqa: F401  (the selection's names, importable from here)
    MATCHES,
    Target,
    counts_from_densities,
    erk_densities,
    global_topk_masks,
    imp_target,
    keep_count,
    layerwise_topk_masks,
    magnitude_masks,
    make_target,
    pruned_tensors,
    topk_flat,
    uniform_densities,
)

if TYPE_CHECKING:
    from ettcli.ticket import Ticket


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


def prune(ticket: Ticket | str | Path, method: str, options: PruneOptions | None = None, **settings) -> Ticket:
    """Prune a ticket's unmasked rewind-point weights with one of the registered methods (``METHODS``).

    The settings are :class:`PruneOptions`, given as one ``options`` or as keywords (``sparsity=0.9``).

    Examples::

        import ettcli
        ref = ettcli.read_ticket("r20_level10.safetensors")
        ettcli.prune("r20_rewind.safetensors", "snip", like=ref, data="~/data").save("r20_snip.safetensors")
        ettcli.prune("r20_rewind.safetensors", "magnitude", sparsity=0.9)

    Args:
        ticket: the ticket whose weights are pruned (a :class:`~ettcli.ticket.Ticket` or a path); its own masks
            are ignored (the method sees the unmasked weights), except by ``reinit`` without ``like``.
        method: a registered method: magnitude, random, reinit, snip, grasp, grasp-abs, synflow, uniform, erk.
        options, settings: the run's :class:`PruneOptions` (each setting's meaning is documented there).

    Returns:
        A new ticket: TICKET's unmasked weights (fresh ones for reinit) with the new masks, and metadata that
        records the method and its settings (``ett.prune.*``), REF's sha256 (``ett.like_sha256``) and TICKET's
        rewind step.

    Raises:
        EttError: an unknown method, a sparsity outside [0, 1), both or neither of ``sparsity`` and ``like``,
            ``match="layerwise"`` without ``like``, a REF of another architecture, missing data.
    """
    return prune_run(ticket, method, options, **settings).ticket


def prune_run(ticket: Ticket | str | Path, method: str, options: PruneOptions | None = None, **settings) -> Pruned:
    """:func:`prune`, returning the ticket together with its target (what the CLI reports)."""
    from ettcli.ticket import Ticket

    o = options if options is not None else PruneOptions(**settings)
    if options is not None and settings:
        raise TypeError("give the pruning settings as options or as keywords, not both")
    m = METHODS.lookup(method)
    from ettcli.settings import dataset_for
    from ettcli.ticket import as_ticket

    match, bn = _check_settings(m, o)
    tk = as_ticket(ticket, "TICKET")
    ref = as_ticket(o.like, "--like") if o.like is not None else None
    if ref is not None:
        check_like(tk, ref, str(o.like))
    ds = dataset_for(tk, o.dataset, "TICKET") if m.network else None
    if m.copies_mask:
        src = ref if ref is not None else tk
        if not src.masks:
            raise EttError(
                f"{'--like ' + str(o.like) if ref is not None else 'TICKET'} has no masks to copy; "
                "reinit puts a ticket's mask on fresh weights: pass --like REF with a sparse ticket"
            )
        target = None
    else:
        names, dense = pruned_tensors(tk, ref, o.exclude)
        target = make_target(tk, names, dense, sparsity=o.sparsity, ref=ref, match=match)
    job = Job(m, tk, ref, target, o, bn, ds)
    masks = m.masks(job)
    target = job.target  # uniform and ERK fix their per-tensor counts
    if m.copies_mask:
        per_tensor = {n: mk.kept for n, mk in masks.items()}
    else:
        per_tensor = dict(target.counts) if target.counts is not None else {}
    if o.shuffle is not None:
        rng = np.random.default_rng(o.shuffle)
        masks = {n: mk.shuffled(rng) for n, mk in masks.items()}

    _check_counts(masks, target)
    fresh = m.fresh_weights or o.reinit is not None
    tensors = dict(tk.tensors)
    if fresh:
        from ettcli.scores import fresh_weights
        from ettcli.stfile import Source

        init_seed = o.reinit if o.reinit is not None else o.seed
        tensors = {k: Source.of_array(v) for k, v in fresh_weights(tk.arch, init_seed).items()}
    else:
        _warn_masked_weights(tk, masks)
    if not m.copies_mask:
        _warn_revived(tk, masks, m.name)
    collapsed = [n for n, mk in masks.items() if mk.kept == 0 and mk.numel > 0]
    if collapsed:
        shown = ", ".join(collapsed[:5]) + (f" and {len(collapsed) - 5} more" if len(collapsed) > 5 else "")
        warn(f"layer collapse: {m.name} keeps no weight in {shown}; no signal passes through that layer")

    meta = _metadata(tk, ref, m, target, o, match, bn, ds)
    if fresh:
        meta["ett.init"] = tk.arch.fam.init_name
        meta["ett.seed"] = str(init_seed)
    out = Ticket(tensors, masks, meta, tk.spec, None)
    return Pruned(out, m, target, ref, match, per_tensor)


def _check_settings(m: Method, o: PruneOptions) -> tuple[str | None, str | None]:
    """Refuse settings that contradict each other or the method; return the resolved match and BatchNorm mode."""
    sparsity, like, match, bn = o.sparsity, o.like, o.match, o.bn
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
    if not m.scored and (o.invert or o.shuffle is not None or o.reinit is not None):
        raise EttError(
            f"{m.name} has no scores; the sanity ablations --invert, --shuffle and --reinit apply to scored methods "
            f"({METHODS.choices(lambda x: x.scored)})"
        )
    if m.data and (not isinstance(o.samples_per_class, int) or o.samples_per_class < 1):
        raise EttError(f"--samples-per-class {o.samples_per_class}: give at least 1 image per class")
    if match is None and not m.copies_mask:
        match = "layerwise" if (like is not None and m.layerwise_like) else "global"
    return match, (bn or m.bn) if m.network else None


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


def _metadata(tk, ref, m, target, o: PruneOptions, match, bn, ds) -> dict[str, str]:
    from ettcli.stfile import sha256_file

    meta = {
        k: v
        for k, v in tk.metadata.items()
        if not k.startswith(("ett.prune.", "ett.like", "ett.source", "ett.imp"))  # IMP's keys describe its mask
        and k not in ("ett.command", "ett.plan", "ett.seed", "ett.init", "ett.sparsity")
    }
    if "ett.seed" in tk.metadata and not (m.fresh_weights or o.reinit is not None):
        meta["ett.seed"] = tk.metadata["ett.seed"]
        if "ett.init" in tk.metadata:
            meta["ett.init"] = tk.metadata["ett.init"]
    meta["ett.prune.method"] = m.name
    if target is not None:
        meta["ett.prune.match"] = match
        meta["ett.prune.target_kept"] = str(target.keep)
        meta["ett.prune.target_sparsity"] = repr(o.sparsity) if o.sparsity is not None else f"{target.sparsity:.6f}"
        if target.dense:
            meta["ett.prune.dense"] = ",".join(target.dense)
    if m.network:
        meta["ett.prune.bn"] = bn
        meta["ett.dataset"] = ds.name
    if m.data and isinstance(o.data, tuple):
        meta["ett.prune.scoring_images"] = f"{len(o.data[1])} given in memory"
    elif m.data:
        meta["ett.prune.samples_per_class"] = str(o.samples_per_class)
    if m.seeded:
        meta["ett.prune.seed"] = str(o.seed)
    if o.invert:
        meta["ett.prune.invert"] = "true"
    if o.shuffle is not None:
        meta["ett.prune.shuffle"] = str(o.shuffle)
    if o.reinit is not None:
        meta["ett.prune.reinit"] = str(o.reinit)
    if tk.path is not None and Path(tk.path).is_file():
        meta["ett.source"] = str(tk.path)
        meta["ett.source_sha256"] = sha256_file(tk.path)
    if ref is not None:
        if ref.path is not None:
            meta["ett.like"] = str(ref.path)
        if ref.path is not None and Path(ref.path).is_file():
            meta["ett.like_sha256"] = sha256_file(ref.path)
    return meta
