"""Any network built of repeated units, named by ``--units PATTERN`` (e.g. ``encoder.block.{i}`` or
``stages.{s}.blocks.{b}``): the keys under the pattern are the units, the units of a stage must have the
same tensor names and shapes, and everything else is stem or head, copied unchanged.

A ticket written from such a network carries its pattern as ``ett.units``, so it is read back without
``--units``.
"""

from __future__ import annotations

from dataclasses import replace

from ettcli.arch import register
from ettcli.families._pattern import PatternFamily, compile_pattern


class Units(PatternFamily):
    name = "units"
    short = "units"
    unit = "unit"
    default_width = 0
    depth_rule = "the number of units; any network read with --units PATTERN"
    library_name = "--units"
    dataset = "cifar10"
    rewind = "0it"

    def recognise(self, shapes):
        return 0  # only by an explicit pattern (infer_with)

    def canonical_name(self, spec):
        stages = spec.stages
        core = str(stages[0]) if len(stages) == 1 else "s" + "-".join(map(str, stages))
        return f"{self.name}_{core}"

    def names_help(self):
        return f"{self.name}_N (N = {self.depth_rule})"

    def infer_with(self, pattern, shapes, where):
        compile_pattern(pattern)  # a malformed pattern is refused before anything is read
        family = _Bound(pattern)
        return replace(family.infer(shapes, where), family=self.name)

    def ticket_metadata(self, spec):
        return {"ett.units": self.layout(spec).pattern}

    def build(self, spec):
        from ettcli.errors import EttError

        raise EttError(
            f"{spec.name}: ett cannot build a model of a network read with --units; load the ticket's tensors "
            "(Ticket.masked_state_dict()) into the model you built"
        )


class _Bound(Units):
    """The units family with one pattern, for one inference."""

    def __init__(self, pattern: str):
        self.pattern = pattern.strip().rstrip(".")

    def unit_regex(self):
        return compile_pattern(self.pattern, "--units")


register(Units())
