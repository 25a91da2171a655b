"""The attention head count of a library's ViT, which its weights do not hold.

A ViT's weights fix its width, not how the width is split into heads, yet the head count changes what the
network computes. ett builds a library's ViT (for training, scoring or LMC) with the count the library's own
models of that width have; where the library ships models of that width with different counts, or none at
that width, it builds with head size 64 (one head where 64 does not divide the width) and says so, once per
process. A ticket may state its count (``ett.heads``: ``ett convert --heads N``, ``Ticket.with_heads``); then
that count is used, and nothing is assumed.
"""

from __future__ import annotations

from collections.abc import Mapping

from ettcli.errors import warn

_WARNED: set[tuple[str, int]] = set()


def heads_for(library: str, spec, known: Mapping[int, tuple[int, ...]]) -> int:
    """The head count to build ``library``'s ViT of ``spec`` with: the count the ticket states, else the one
    ``known`` gives for its width (each width the library ships -> the head counts its models of that width
    have, the most common first)."""
    if spec.heads:
        return spec.heads
    width, name = spec.width, spec.name
    counts = known.get(width, ())
    heads = counts[0] if counts else (width // 64 if width % 64 == 0 else 1)
    if len(counts) != 1 and (library, width) not in _WARNED:
        _WARNED.add((library, width))
        if counts:
            why = f"{library}'s models of width {width} have {' or '.join(map(str, counts))} heads"
        else:
            why = f"{library} has no model of width {width}"
        warn(
            f"{name}: the attention head count is not in the weights and {why}; building with {heads} "
            f"head{'s' if heads > 1 else ''}. A network with another count computes something else: state "
            "its count with 'ett convert TICKET --heads N -o OUT'"
        )
    return heads
