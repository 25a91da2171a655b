"""Elastic ticket transforms: apply a :class:`~ettcli.plan.Plan` to a ticket (never torch; numpy only for
random copies, or where large masks are checked with it).

A transform is, at bottom, copying byte ranges under new names: the target ticket's tensors are the
source's :class:`~ettcli.stfile.Source` values (byte ranges of the source file, or in-memory arrays),
listed under the target's names, one entry per copy; masks are small and already in memory. Nothing is read
until the ticket is saved, and saving streams every range from the source into a temporary file beside the
output before renaming it, so the output may be the input file itself.

Library use::

    import ettcli
    t = ettcli.stretch("r20.safetensors", "resnet-56")             # order="interpolate" by default
    t.save("r56.safetensors")
    s = ettcli.squeeze(t, "resnet-20", drop="interleave")          # the exact inverse
"""

from __future__ import annotations

import os
from pathlib import Path

from ettcli.arch import ArchSpec
from ettcli.errors import EttError
from ettcli.mask import Mask
from ettcli.plan import Plan, make_plan
from ettcli.sparsity import SparsityReport
from ettcli.ticket import Ticket, output_format, read_ticket

CARRIED_METADATA = ("ett.rewind_step", "ett.dataset", "ett.hf_config", "ett.heads")
OVERLAP_HASH_BYTES = 16 << 20  # hash sources at least this large while writing (see save_transformed)


def _as_ticket(ticket_or_path) -> Ticket:
    if isinstance(ticket_or_path, Ticket):
        return ticket_or_path
    return read_ticket(ticket_or_path)


def source_report(ticket: Ticket) -> SparsityReport:
    """The source's sparsity, to show beside :func:`predict_sparsity`'s."""
    return ticket.sparsity_report()


def predict_sparsity(ticket: Ticket, plan: Plan) -> SparsityReport:
    """The target's sparsity under ``plan``, counted from the source masks without building the ticket."""
    _check_plan_source(ticket, plan)
    kept = {}
    for name, (src, _) in plan.tensor_sources().items():
        if src in ticket.masks:
            kept[name] = ticket.masks[src].kept
    return SparsityReport.of(plan.target, kept)


def _check_plan_source(ticket: Ticket, plan: Plan) -> None:
    if ticket.arch != plan.source:
        raise EttError(f"the plan is for {plan.source.name} but the ticket is {ticket.arch.name}")


def apply_plan(ticket: Ticket, plan: Plan, random_copies: int | None = None, hash_source: bool = True) -> Ticket:
    """The target ticket of ``plan``: every tensor of a unit copied for each of its copies, masks included.

    Stem, classifier and unit 0 of every stage are copied as they are. With ``random_copies`` (a seed),
    the second and later copies of a unit get each mask shuffled within its tensor (the paper's control:
    same per-tensor density, random positions; the weights are still copied). Copies share their source's
    storage in memory; the saved file holds one independent copy per position. The metadata records the
    plan and the source (its path, architecture and, unless ``hash_source`` is false, its sha256; see
    :func:`save_transformed` for a save that hashes the source while it writes).
    """
    _check_plan_source(ticket, plan)
    if random_copies is not None and random_copies < 0:
        raise EttError(f"the random-copies seed is {random_copies}; a seed is an integer of 0 or more")
    rng = None
    if random_copies is not None:
        import numpy as np

        rng = np.random.default_rng(random_copies)
    tensors = {}
    masks: dict[str, Mask] = {}
    for name, (src, copy) in plan.tensor_sources().items():
        tensors[name] = ticket.tensors[src]
        if src in ticket.masks:
            mask = ticket.masks[src]
            if rng is not None and copy > 0:
                mask = mask.shuffled(rng)
            masks[name] = mask
    meta = {k: ticket.metadata[k] for k in CARRIED_METADATA if k in ticket.metadata}
    meta["ett.plan"] = plan.mapping
    meta["ett.transform"] = plan.verb or "transform"
    if plan.preset:
        meta["ett.preset"] = plan.preset
    if random_copies is not None:
        meta["ett.random_copies"] = str(random_copies)
    meta["ett.source_arch"] = ticket.arch.name
    if ticket.path is not None:
        meta["ett.source"] = str(ticket.path)
        if hash_source and ticket.path.is_file():
            from ettcli.stfile import sha256_file

            meta["ett.source_sha256"] = sha256_file(ticket.path)
    return Ticket(tensors, masks, meta, plan.target, None)


def transform(
    ticket_or_path,
    to: str | ArchSpec | None = None,
    *,
    verb: str | None = None,
    order: str | None = None,
    drop: str | None = None,
    mapping: str | None = None,
    stages: str | tuple | None = None,
    random_copies: int | None = None,
) -> Ticket:
    """Plan and apply a transform in either direction (see :func:`ettcli.plan.make_plan`)."""
    ticket = _as_ticket(ticket_or_path)
    plan = make_plan(ticket.arch, to, verb=verb, order=order, drop=drop, mapping=mapping, stages=stages)
    return apply_plan(ticket, plan, random_copies)


def stretch(
    ticket_or_path,
    to: str | ArchSpec | None = None,
    *,
    order: str | None = "interpolate",
    mapping: str | None = None,
    stages: str | tuple | None = None,
    random_copies: int | None = None,
) -> Ticket:
    """A deeper ticket of the same family: replicate units (``order`` "interpolate" or "append").

    ``to`` is a canonical name (``cifar_resnet_56``) or a short name in the source's family (``resnet-56``);
    ``stages`` gives stage lengths instead (``"5,5,5"``); ``mapping`` gives the plan in the grammar (then
    ``order`` is ignored). Returns a :class:`~ettcli.ticket.Ticket`; call ``.save(path)`` to write it.
    """
    return transform(
        ticket_or_path,
        to,
        verb="stretch",
        order=None if mapping is not None else order,
        mapping=mapping,
        stages=stages,
        random_copies=random_copies,
    )


def squeeze(
    ticket_or_path,
    to: str | ArchSpec | None = None,
    *,
    drop: str | None = "interleave",
    mapping: str | None = None,
    stages: str | tuple | None = None,
    random_copies: int | None = None,
) -> Ticket:
    """A shallower ticket of the same family: drop units (``drop`` "interleave", "tail" or "head").

    Arguments as in :func:`stretch`. ``interleave`` undoes ``interpolate`` exactly and ``tail`` undoes
    ``append`` (its first copies of every unit come first).
    """
    return transform(
        ticket_or_path,
        to,
        verb="squeeze",
        drop=None if mapping is not None else drop,
        mapping=mapping,
        stages=stages,
        random_copies=random_copies,
    )


def save_transformed(ticket: Ticket, out: str | Path, source: Path | None = None) -> Path:
    """Save ``ticket`` atomically, recording the sha256 of ``source`` hashed while the tensors are written.

    Hashing a 100 MB source takes about as long as writing the target, and the digest belongs in the header,
    which comes first; so the header is written with a placeholder of the digest's length, a second thread
    hashes the source meanwhile, and the placeholder is overwritten before the file is renamed into place.
    """
    out = Path(out)
    if source is None or not Path(source).is_file():
        return ticket.save(out)
    from ettcli.stfile import atomic_path, sha256_file

    small = Path(source).stat().st_size < OVERLAP_HASH_BYTES  # not worth a thread and a second fsync
    if small or output_format(out) != "safetensors":  # a torch file has no header to patch
        return ticket.save(out, ett__source_sha256=sha256_file(source))
    import secrets
    import struct
    from concurrent.futures import ThreadPoolExecutor

    placeholder = ("pending-" + secrets.token_hex(28)).encode()  # 64 characters, as a hex sha256 digest
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(sha256_file, source)
        with atomic_path(out) as tmp:
            ticket.save(tmp, fmt="safetensors", ett__source_sha256=placeholder.decode())
            value = digest.result().encode()
            with open(tmp, "r+b") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = fh.read(n)
                at = header.find(placeholder)
                if at < 0 or len(value) != len(placeholder):
                    raise RuntimeError("the header lost its sha256 placeholder")
                fh.seek(8 + at)
                fh.write(value)
                fh.flush()
                os.fsync(fh.fileno())
    return out


def default_output(source: str | Path, target: ArchSpec) -> Path:
    """``r20.safetensors`` -> ``r20_to_cifar_resnet_56.safetensors`` beside the source."""
    source = Path(source)
    stem = source.name if source.is_dir() else source.stem
    return source.parent / f"{stem}_to_{target.name}.safetensors"
